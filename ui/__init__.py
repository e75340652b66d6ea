"""Helpers of the Streamlit app: caching, maps, thumbnails, exports and friendly errors (no page logic)."""
