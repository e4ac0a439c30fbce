"""Plain STOW-RS baseline, run inside the edge namespace: dicomweb-client, batches of 10.

A failed batch is retried whole (the library's own retry is off: see DESIGN.md's known trap).
Prints one JSON line: seconds, batches, retries.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session

url, folder = sys.argv[1], Path(sys.argv[2])
files = sorted(folder.rglob("*.dcm"))
session = create_session()
client = DICOMwebClient(url=url, session=session)
client.set_http_retry_params(retry=False)
started = time.monotonic()
retries = 0
for i in range(0, len(files), 10):
    batch = [pydicom.dcmread(f) for f in files[i : i + 10]]
    while True:
        try:
            client.store_instances(batch)
            break
        except (requests.RequestException, OSError):
            retries += 1
            time.sleep(1)
print(
    json.dumps(
        {
            "seconds": time.monotonic() - started,
            "batches": (len(files) + 9) // 10,
            "retries": retries,
        }
    )
)
