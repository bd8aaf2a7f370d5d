"""The Streamlit Community Cloud entrypoint: the playground in hosted mode, without torch.

Community Cloud installs the dependency file beside its entrypoint before the repository root's, so this
folder's requirements.txt (the hosted pins) is what it installs, not the root's torch. It runs
`streamlit run deploy/streamlit-cloud/streamlit_app.py` from the repository root, which is where it
reads `.streamlit/config.toml`.

Streamlit names pages relative to the entrypoint's folder (st.Page, st.page_link, st.switch_page), and
the app names them `playground/...`: `playground` here is a link to the repository's own folder, so the
root app's one page list serves unchanged.
"""

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))   # `streamlit run` puts only this folder on the path, not the repository

from core.limits import HOSTED_ENV  # noqa: E402  (importable only once ROOT is on the path)

# Community Cloud has no other place to set it; set before playground.shared reads it, once per process
os.environ[HOSTED_ENV] = "1"
runpy.run_path(str(ROOT / "streamlit_app.py"))
