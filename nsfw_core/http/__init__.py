"""The HTTP API beside the Streamlit UI: the route table and lifespan (``app``), the one dispatcher
(``routing``) and error path (``errors``), bodies and flags (``bodies``), the steps every classifying route
takes first (``guard``), the original API (``predict``), API v1 (``v1``), the operator's routes (``ops``),
the typed contract of both generations (``contract``), the OpenAPI document (``openapi``) and its page
(``docs``)."""
