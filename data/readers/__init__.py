"""Readers that turn public dataset layouts and user GeoTIFFs into chip stores (see each module's doc)."""

from data.readers.bigearthnet import ingest_bigearthnet
from data.readers.common import IngestResult
from data.readers.m3leo import ingest_m3leo
from data.readers.mosaic import ModalityInput, ingest_geotiffs
from data.readers.sen1floods11 import ingest_sen1floods11

__all__ = ["IngestResult", "ModalityInput", "ingest_bigearthnet", "ingest_geotiffs", "ingest_m3leo", "ingest_sen1floods11"]
