"""Limits that count what a request costs (issue 29, point 5): cost units, a client's share of the machine,
wrong API keys, minimum lengths of keys and secrets, and limits shared by replicas through the database.

The figures before and after each fix are in docs/reliability.md ("Request cost and shares"); the side by
side run of the issue's attack is bench/cost_share.py.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import subprocess
import sys
import time

import pytest
from PIL import Image

from nsfw_core import ratelimit
from nsfw_core.access import AttemptLimiter
from nsfw_core.admission import Admission
from nsfw_core.base.errors import Overloaded, TooManyAttempts
from nsfw_core.base.rates import Rate
from nsfw_core.base.settings import SettingsError, load_settings
from nsfw_core.inference.registry import CPU_MS_PER_IMAGE
from nsfw_core.ratelimit import Decision, MemoryBuckets, RateLimited, RateLimiter, ShareLimiter, image_cost
from nsfw_core.state.db import open_pool
from nsfw_core.state.limits import DatabaseBuckets, DatabaseFailures
from tests.helpers.appserver import AppServer, app_server
from tests.helpers.paths import REFERENCE, ROOT
from tests.helpers.servers import hang

SMILE = (REFERENCE / "smile.jpg").read_bytes()
KEY_A = "client-a-key-0123456789abcdef"
KEY_B = "client-b-key-0123456789abcdef"


def gif(frames: int = 16, side: int = 64) -> bytes:
    """An animated GIF of ``frames`` different flat frames (a few hundred bytes)."""
    images = [Image.new("RGB", (side, side), (15 * i, 255 - 15 * i, (40 * i) % 256)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def classify(server: AppServer, key: str, data: bytes, model: str | None = None):
    body = {"image": {"base64": base64.b64encode(data).decode()}, **({"model": model} if model else {})}
    return server.request("POST", "/v1/classify", body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json", **bearer(key)}, timeout=120)


# ---------------------------------------------------------------- the rules, without a server


def test_cost_units():
    assert image_cost(1, 1.0, 500_000) == 1.0  # a photo on the default model
    inception = CPU_MS_PER_IMAGE["InceptionV3"] / CPU_MS_PER_IMAGE["MobileNetV2Mid"]
    assert image_cost(16, inception, 4096) == pytest.approx(149.9, abs=0.1)  # the GIF on InceptionV3
    assert image_cost(1, 1.0, 16_000_000) == 15.0  # a 16-megapixel image: its decoding beyond the first 2 MP
    assert image_cost(16, 1.0, 256_065_536) == pytest.approx(270.1, abs=0.1)  # 16 frames of 4000x4000


def test_a_charge_larger_than_the_burst_runs_when_the_bucket_is_full_and_leaves_it_in_debt():
    now = [0.0]
    limiter = RateLimiter(Rate(1.0, 5), store=MemoryBuckets(lambda: now[0]))
    limiter.check("a")  # the entry unit
    limiter.check("a", 20.0, slack=1.0)  # an animation: the bucket held 5 with the entry, so it may run
    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    assert caught.value.details == {"retry_after": 17, "limit": "rate"}  # 16 units of debt, then one
    with pytest.raises(RateLimited):
        limiter.check("a", 20.0, slack=1.0)
    now[0] += 17
    limiter.check("a")


def allowed(decision: Decision | None) -> bool:
    assert decision is not None  # a capacity is set: the share decides
    return decision.allowed


def test_a_share_is_enforced_only_while_another_client_is_active():
    now = [0.0]
    share = ShareLimiter(0.5, clock=lambda: now[0])
    assert share.take("a", 1000.0) is None  # no capacity measured yet: no limit
    share.set_capacity(100.0)  # 50 units a second each, a burst of 50
    for _ in range(20):  # alone: the machine is a's to use
        decision = share.take("a", 60.0)
        assert decision is not None and decision.allowed
        now[0] += 0.1
    assert allowed(share.take("b", 1.0))  # b arrives
    refused = share.take("a", 60.0)
    assert refused is not None and not refused.allowed and refused.retry_after_s >= 1
    now[0] += 1.0  # a's bucket refilled to its burst: 50 units
    assert allowed(share.take("a", 60.0))  # larger than the burst: runs from a full bucket, then waits
    assert not allowed(share.take("a", 1.0))
    now[0] += 5.0  # b went quiet: a may use it all again
    assert allowed(share.take("a", 60.0))


def test_admission_gives_one_client_at_most_its_share():
    admission = Admission(10, share=0.5)
    with admission.admit(4, "a"), admission.admit(1, "a"):
        with pytest.raises(RateLimited) as caught:
            with admission.admit(1, "a"):
                pass
        assert caught.value.details["limit"] == "in_flight"
        with admission.admit(5, "b"):  # the others' half stays free
            with pytest.raises(Overloaded):
                with admission.admit(1, "c"):
                    pass
    assert admission.in_flight == 0 and admission.by_key == {}
    with admission.admit(400, "a"):  # a request larger than a share: runs alone, counted at the share
        assert admission.in_flight == 5
    # an expensive model's image (16 frames, 150 units), its first unit admitted with its request: its frames
    # counted up to the share (5), it runs while the client holds nothing else
    with admission.admit(1, "a"), admission.admit(149, "a", base=1, frames=16):
        assert admission.in_flight == 6
        with pytest.raises(RateLimited):
            with admission.admit(1, "a"):
                pass
    with admission.admit(2, "a"):  # a batch of two such images: the first runs...
        with admission.admit(149, "a", base=2, frames=1):
            assert admission.in_flight == 6
            with pytest.raises(RateLimited):  # ...the second does not fit beside it
                with admission.admit(149, "a", base=2, frames=1):
                    pass
        with pytest.raises(RateLimited), admission.admit(1, "b"), admission.admit(1, "a"):
            with admission.admit(149, "a", base=2, frames=1):  # not alone: the client holds another request
                pass
    everyone = Admission(128)  # no API keys: no share; an image counts its frames, its model's cost up to half
    with everyone.admit(1), everyone.admit(149, base=1, frames=16):
        assert everyone.in_flight == 64
        with everyone.admit(64):
            with pytest.raises(Overloaded):
                with everyone.admit(1):
                    pass
    small = Admission(3)  # more frames than the limit never fit, as before
    with small.admit(1), pytest.raises(Overloaded):
        with small.admit(4, base=1, frames=5):
            pass


def test_keys_and_secrets_have_a_minimum_length():
    for name, value in [("NSFW_API_KEYS", "a"), ("NSFW_API_KEYS", f"{KEY_A},short"), ("NSFW_WEBHOOK_SECRET", "x"),
                        ("NSFW_METRICS_TOKEN", "t" * 15), ("NSFW_ADMIN_SECRET", "s" * 15),
                        # the keys of every role (issue 25's reviewer and admin keys) and the sign-in cookie's key
                        ("NSFW_REVIEWER_API_KEYS", "r" * 15), ("NSFW_ADMIN_API_KEYS", f"{KEY_A},{'a' * 15}"),
                        ("NSFW_OIDC_COOKIE_SECRET", "c" * 15)]:
        with pytest.raises(SettingsError, match=f"{name}=<secret>: .*at least 16 characters"):
            load_settings({name: value})
    assert load_settings({"NSFW_API_KEYS": f"{KEY_A},{KEY_B}"}).api_keys == (KEY_A, KEY_B)


# ---------------------------------------------------------------- the real server


@pytest.mark.slow
@pytest.mark.parametrize("name,value", [("NSFW_API_KEYS", "k3y!"), ("NSFW_WEBHOOK_SECRET", "wh$x")])
def test_the_server_refuses_to_start_with_a_short_key_or_secret(tmp_path, name, value):
    """Before: a 1-character API key or webhook secret was accepted."""
    server = AppServer(tmp_path, **{name: value, "NSFW_WEBHOOK_URL": "https://example.com/hook"})
    try:
        code = server.process.wait(timeout=60)
    finally:
        server.stop()
    log = server.log.read_text()
    assert code != 0 and f"invalid setting: {name}=<secret>: " in log and "at least 16 characters" in log
    assert value not in log.split("invalid setting:")[1][len(name) + 1:]  # the value itself is never shown


@pytest.mark.slow
def test_wrong_keys_are_limited_per_address_and_a_right_key_still_passes(tmp_path):
    """Before: wrong keys were never limited (300 in 0.27 s, each a 401)."""
    with app_server(tmp_path, NSFW_API_KEYS=KEY_A, NSFW_WRONG_KEY_LIMIT="5/m;burst=5") as server:
        wrong = [server.request("GET", "/v1/reviews/1", headers=bearer(f"wrong-{i}-0123456789abc")) for i in range(5)]
        assert [r.status for r in wrong] == [401] * 5
        limited = server.request("GET", "/v1/reviews/1", headers=bearer("wrong-5-0123456789abc"))
        body = limited.error(429, "rate_limited")
        assert body["limit"] == "wrong_key" and int(limited.headers["retry-after"]) >= 1
        server.request("GET", "/v1/reviews/1").error(429, "rate_limited")  # no key is a wrong key too
        assert server.request("GET", "/v1/reviews/1", headers=bearer(KEY_A)).status == 404  # the right key passes
        metrics = server.request("GET", "/metrics", headers=bearer(KEY_A)).body.decode()
        assert 'nsfw_rate_limited_total{limit="wrong_key"} 2.0' in metrics
        # /metrics takes keys too, so it answers the same 429, and its contract says so
        wrong_metrics = server.request("GET", "/metrics", headers=bearer("wrong-6-0123456789abc"))
        assert wrong_metrics.error(429, "rate_limited")["limit"] == "wrong_key"
        document = server.request("GET", "/openapi.json").json()
        assert "429" in document["paths"]["/metrics"]["get"]["responses"]


@pytest.mark.slow
def test_the_reviewer_api_limits_wrong_keys_and_gives_each_reviewer_key_its_own_budget(tmp_path):
    """Issue 25's reviewer API under these limits.  Before the merge's fix: a wrong reviewer key was never
    limited (every guess a 401, and without client keys there was no wrong-key limiter at all), and a reviewer
    key's calls were counted in its address's bucket, the same as a keyless client's classifications from that
    address.  And an audit (the server's sample of the client's answer) costs the client nothing."""
    r1, r2 = "reviewer-key-1-0123456789", "reviewer-key-2-0123456789"
    env = {"NSFW_REVIEWER_API_KEYS": f"{r1},{r2}", "NSFW_AUDIT_RATE": "1",
           "NSFW_RATE_LIMIT": "3/h;burst=3", "NSFW_WRONG_KEY_LIMIT": "5/h;burst=5"}
    with app_server(tmp_path, **env) as server:
        house = classify(server, "", (REFERENCE / "house.jpg").read_bytes())  # no client keys: public
        assert house.status == 200 and house.json()["verdict"] == "safe"  # automatic: audited at rate 1
        assert house.headers["ratelimit-remaining"] == "2"  # one unit: the audit costs the client nothing
        wrong = [server.request("POST", "/v1/reviews/claim", headers=bearer(f"wrong-{i}-0123456789abc"))
                 for i in range(5)]
        assert [r.status for r in wrong] == [401] * 5
        limited = server.request("POST", "/v1/reviews/claim", headers=bearer("wrong-5-0123456789abc"))
        assert limited.error(429, "rate_limited")["limit"] == "wrong_key"
        server.request("POST", "/v1/reviews/claim").error(429, "rate_limited")  # no key is a wrong key too
        claimed = server.request("POST", "/v1/reviews/claim", headers=bearer(r1))  # a right key still passes
        assert claimed.status == 200 and claimed.headers["ratelimit-remaining"] == "2"  # r1's own bucket
        item = claimed.json()["item"]
        assert item["kind"] == "audit" and "verdict" not in item  # the sampled answer, blind
        for remaining in ("1", "0"):
            again = server.request("POST", "/v1/reviews/claim", headers=bearer(r1))
            assert again.status == 200 and again.headers["ratelimit-remaining"] == remaining
        assert server.request("POST", "/v1/reviews/claim", headers=bearer(r1)).error(429, "rate_limited")["limit"] \
            == "rate"
        assert server.request("GET", "/v1/evaluation", headers=bearer(r2)).status == 200  # r2: a budget of its own
        again = classify(server, "", SMILE)  # the address's bucket: untouched by the reviewer keys' calls
        assert again.status == 200 and again.headers["ratelimit-remaining"] == "1"


@pytest.mark.slow
def test_a_request_costs_its_frames_times_the_models_cost(tmp_path):
    """Before: the rate limit counted requests: a 16-frame GIF on InceptionV3 (1.94 CPU s) cost what a
    photo (0.018 s) did."""
    with app_server(tmp_path, NSFW_API_KEYS=KEY_A, NSFW_RATE_LIMIT="6/m;burst=30") as server:
        photo = classify(server, KEY_A, SMILE)
        assert photo.status == 200 and photo.headers["ratelimit-remaining"] == "29"  # one unit
        animation = classify(server, KEY_A, gif(16))
        assert animation.status == 200 and len(animation.json()["frames"]) == 16
        assert animation.headers["ratelimit-remaining"] == "13"  # 16 frames: 16 units
        other = classify(server, KEY_A, SMILE, model="MobileNetV2")  # 0.53 of a unit: the entry's one
        assert other.status == 200 and other.headers["ratelimit-remaining"] == "12"
        heavy = classify(server, KEY_A, gif(16), model="InceptionV3")  # 150 units: the bucket cannot hold them
        body = heavy.error(429, "rate_limited")
        assert body["limit"] == "rate" and body["retry_after"] >= 150  # until the bucket holds 29 of the 30 again


@pytest.mark.slow
def test_one_client_cannot_fill_admission(tmp_path, local_server):
    """Before: admission counted images for everyone together: one client's batch of 8 GIFs took all 128 places
    and another client got 503 on 11 of 69 requests."""
    stall = local_server.route("/stall.jpg", hang())
    env = {"NSFW_API_KEYS": f"{KEY_A},{KEY_B}", "NSFW_MAX_IN_FLIGHT": "4", "NSFW_KEY_SHARE": "0.5",
           "NSFW_ALLOW_PRIVATE_HOSTS": local_server.netloc, "NSFW_FETCH_TIMEOUT": "6"}
    with app_server(tmp_path, **env) as server, concurrent.futures.ThreadPoolExecutor(4) as pool:
        body = json.dumps({"image": {"url": stall}}).encode()
        headers = {"Content-Type": "application/json", **bearer(KEY_A)}
        stuck = [pool.submit(server.request, "POST", "/v1/classify", body, headers) for _ in range(4)]
        deadline = time.monotonic() + 10
        while len(local_server.requests) < 2:  # client A's share (2 of 4) is fetching
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        served = classify(server, KEY_B, SMILE)
        assert served.status == 200, served  # the others' share is free
        answers = [f.result() for f in stuck]
    assert sorted(a.status for a in answers) == [429, 429, 504, 504]
    assert all(a.json()["limit"] == "in_flight" for a in answers if a.status == 429)


# ---------------------------------------------------------------- shared by replicas


@pytest.mark.slow
def test_rate_limits_are_shared_by_replicas(tmp_path, postgres_url):
    """Before: each replica counted on its own: a client got the limit once per replica."""
    env = {"NSFW_DATABASE_URL": postgres_url, "NSFW_API_KEYS": KEY_A, "NSFW_RATE_LIMIT": "3/h;burst=3"}
    first, second = AppServer(tmp_path / "one", **env), AppServer(tmp_path / "two", **env)
    try:
        first.wait(), second.wait()
        statuses = [server.request("GET", "/v1/reviews/1", headers=bearer(KEY_A)).status
                    for server in (first, second, first, second, first, second)]
        assert statuses == [404, 404, 404, 429, 429, 429]
    finally:
        first.stop(), second.stop()


def test_buckets_and_sign_in_failures_are_shared_through_the_database(postgres_url):
    pools = [open_pool(postgres_url), open_pool(postgres_url)]  # two replicas
    try:
        limiters = [RateLimiter(Rate(1 / 3600, 4), store=DatabaseBuckets(pool)) for pool in pools]
        assert [limiters[i % 2].take("key:x").allowed for i in range(6)] == [True] * 4 + [False] * 2
        assert limiters[1].take("key:y").allowed  # another client has its own bucket
        signins = [AttemptLimiter(max_failures=3, clock=time.time, store=DatabaseFailures(pool, "signin"))
                   for pool in pools]
        for i in range(3):
            signins[i % 2].check()
            signins[i % 2].failed()
        for limiter in signins:  # the third failure locked both replicas
            with pytest.raises(TooManyAttempts):
                limiter.check()
        with pools[0].transaction(write=False) as tx:
            buckets = [str(r[0]) for r in tx.run("SELECT bucket FROM limit_buckets")]
        assert len(buckets) == 2 and all(len(b) == 64 and "key" not in b for b in buckets)  # digests only
    finally:
        for pool in pools:
            pool.close()


def test_a_database_that_is_down_falls_back_to_counting_here(tmp_path):
    pool = open_pool(None, tmp_path)
    store = DatabaseBuckets(pool)
    limiter = RateLimiter(Rate(1.0, 2), store=store)
    assert limiter.take("a").allowed
    pool.close()  # the database is gone: the limit still holds, in this process
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, False]
    assert store.fallbacks == 3


def test_the_meter_charges_every_budget_and_gives_back_what_a_refused_charge_took():
    now = [0.0]
    limiter = RateLimiter(Rate(1.0, 10), store=MemoryBuckets(lambda: now[0]))
    meter = ratelimit.Meter("key:a", "key_x", limiter, None)
    assert meter.enter() == {"RateLimit-Limit": "10", "RateLimit-Remaining": "9", "RateLimit-Reset": "1"}
    meter.charge(0.44)  # within the entry unit: nothing more
    meter.charge(4.0)  # the rest of the entry (0.56) counted, 3.44 charged
    assert meter.headers is not None and meter.headers["RateLimit-Remaining"] == "5"
    with pytest.raises(RateLimited):
        meter.charge(50.0)
    assert meter.charged == pytest.approx(4.44)


@pytest.mark.slow
def test_bench_script_runs(tmp_path):
    """bench/cost_share.py's own check: it builds its images and parses its options (the run itself is long)."""
    out = subprocess.run([sys.executable, "bench/cost_share.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--seconds" in out.stdout
