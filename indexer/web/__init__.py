"""``clipindex serve``: the JSON API and the page (``app``, on FastAPI), the warm state behind them (``service``),
thumbnails (``thumbnails``), the Host and token checks (``security``), the running server (``server``) and how
``clipindex search`` finds and asks a running server (``discovery``, ``client``: standard library only, so that
path never imports ONNX Runtime or FastAPI). Importing this package imports nothing.
"""
