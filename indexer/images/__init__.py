"""Images: files, bytes, URLs and PIL images to RGB, then to CLIP's ``pixel_values``, exactly as transformers does.

Owns decoding (limits, EXIF, modes, draft, camera RAW files through the optional rawpy), the Pillow-exact resize
and crop, preprocessing, the library's input kinds and the decode-ahead pool. May import the core modules only
(errors, settings, cstderr).
"""
