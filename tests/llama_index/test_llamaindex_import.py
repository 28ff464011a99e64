"""Without LlamaIndex, importing the integration names the extra to install."""

from __future__ import annotations

import subprocess
import sys


def test_missing_llama_index_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['llama_index'] = None\n"  # behave as if LlamaIndex were not installed
        "try:\n"
        "    import omnitrace_integrations.llama_index\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert 'pip install "omnitrace-integrations[llama-index]"' in out


def test_names_are_lazy() -> None:
    import omnitrace_integrations.llama_index as pkg

    assert pkg.OmniTraceLLM.class_name() == "OmniTraceLLM"
    assert set(pkg.__all__) >= {"OmniTraceLLM", "OmniTraceCitationQueryEngine", "OmniTraceSynthesizer"}
