"""Streamlit helpers shared by the pages: cached accessors, charts, widgets."""
