"""A mounted ConfigMap or Secret volume, updated the way the kubelet updates one."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from modelplane_api import facts


class AccessDir:
    """A mounted ConfigMap's directory, updated as the kubelet's AtomicWriter does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = itertools.count()
        root.mkdir(parents=True, exist_ok=True)

    @property
    def file(self) -> Path:
        return self.root / facts.ACCESS_FILE

    def publish(self, document: dict[str, Any] | str) -> None:
        version = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{next(self.versions)}"
        version.mkdir()
        text = document if isinstance(document, str) else json.dumps(document)
        (version / facts.ACCESS_FILE).write_text(text)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        if not self.file.is_symlink():
            self.file.symlink_to(f"..data/{facts.ACCESS_FILE}")
