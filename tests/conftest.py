import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test never touches the network
