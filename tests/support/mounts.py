"""Folders as kubelet mounts them into a pod."""

from pathlib import Path


def configmap_mount(folder: Path, files: dict[str, str]) -> Path:
    """A folder laid out as kubelet mounts a ConfigMap: hidden timestamped data, ``..data``, and
    one symlink per key."""
    data = folder / "..2026_11_26_10_00_00.123456789"
    data.mkdir(parents=True)
    for name, content in files.items():
        (data / name).write_text(content)
    (folder / "..data").symlink_to(data.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")
    return folder
