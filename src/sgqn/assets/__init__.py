"""Images, videos and colours of the DMC-GB test modes and the overlay augmentation: user directories
or embedded defaults (and `dmcgb_colors.json`, shipped). Imports nothing of the training path."""

from sgqn.assets.cache import cache_dir, clear_memory_cache
from sgqn.assets.clips import Clip, JpegDirClip, Mp4Clip, resize_bilinear
from sgqn.assets.colors import (
    COLOR_KEYS,
    ColorSetting,
    embedded_color_settings,
    export_color_json,
    load_color_settings,
)
from sgqn.assets.embedded import EMBEDDED_IMAGES, EmbeddedClip, embedded_clips, embedded_overlays
from sgqn.assets.errors import DataSourceError
from sgqn.assets.sources import DAVIS17_TRAINING_VIDEOS, DataSources, load_overlay_images

__all__ = [
    "COLOR_KEYS",
    "DAVIS17_TRAINING_VIDEOS",
    "EMBEDDED_IMAGES",
    "Clip",
    "ColorSetting",
    "DataSourceError",
    "DataSources",
    "EmbeddedClip",
    "JpegDirClip",
    "Mp4Clip",
    "cache_dir",
    "clear_memory_cache",
    "embedded_clips",
    "embedded_color_settings",
    "embedded_overlays",
    "export_color_json",
    "load_color_settings",
    "load_overlay_images",
    "resize_bilinear",
]
