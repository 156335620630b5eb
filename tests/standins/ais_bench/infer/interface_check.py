"""Stand-in for `ais_bench.infer.interface_check` (tools repository, added in ac94fb68,
2024-06-13; followed as of 8da7f645, 2025-12-18), with the path rules of
`ais_bench/infer/common/path_security_check.py` at 8da7f645 folded in. The "2024-06" generation's
InferSession calls these before it opens a session; older generations do not have the module's
checks (their interface.py never imports it).

`check_model_path_legality(path)` = `check_path_legality(path, READ, max_size=10 GiB,
suffix=["om"])` (suffix since f4a89ec0, 2024-11-04):
- `FileStat(path)` takes `os.path.abspath(path)` (since 6b810408, 2024-10-24; ac94fb68 checked
  the string as given) and refuses a path over 4096 characters, a component over 255, or any
  character outside `[_A-Za-z0-9/.-]` (`PATH_WHITE_LIST_REGEX`): ValueError "The path string is
  illegal. Please check." after logging `path:... contains illegal char, ...`;
- not a regular file (missing included): ValueError "The path:... is not a file.";
- `check_linux_permission(READ)`: a symlink (`os.path.islink` of the path itself), a file whose
  owner is not the effective user and whose group is not one of the user's groups, a group- or
  other-writable file (`S_IWGRP | S_IWOTH`), a file the user cannot read: ValueError "The
  path:... is illegal. Please check the error log for more detail.", after an `[ERROR]` log line
  saying which;
- a suffix other than `.om`, a file over 10 GiB (`OM_MODEL_MAX_SIZE`): ValueError.
`check_device_range_valid(value)`: TypeError "device:... is not a integer!" unless an int,
ValueError "device:... is illegal. legal value range is [0, 255]" outside 0..255.
"""

import logging
import os
import re
import stat
import sys

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="[%(levelname)s] %(message)s")
logger = logging.getLogger("ais_bench")

PATH_WHITE_LIST_REGEX = re.compile(r"[^_A-Za-z0-9/.-]")
READ_FILE_NOT_PERMITTED_STAT = stat.S_IWGRP | stat.S_IWOTH
OM_MODEL_MAX_SIZE = 10 * 1024 * 1024 * 1024
ACL_JSON_MAX_SIZE = 8 * 1024
CUSTOM_SIZE_MAX = 16 * 1024 * 1024 * 1024


def _legal_string(path: str) -> bool:
    if len(path) > 4096 or any(len(part) > 255 for part in path.split("/")):
        logger.error(f"file total path{path} length out of range, please check the file path")
        return False
    if PATH_WHITE_LIST_REGEX.search(path):
        logger.error(f"path:{path} contains illegal char, legal chars include A-Z a-z 0-9 _ - / .")
        return False
    return True


def _legal_for_reading(path: str) -> bool:
    if not os.path.exists(path):
        logger.error(f"path: {path} not exist, please check if file or dir is exist")
        return False
    if os.path.islink(path):
        logger.error(f"path :{path} is a soft link, not supported, please import file(or "
                     "directory) directly")
        return False
    status = os.stat(path)
    if status.st_uid != os.geteuid() and status.st_gid not in os.getgroups():
        logger.error(f"current user isn't path:{path}'s owner or ownergroup, make sure current "
                     "user belong to file(or directory)'s owner or ownergroup")
        return False
    if stat.S_IMODE(status.st_mode) & READ_FILE_NOT_PERMITTED_STAT:
        logger.error(f"The file {path} is group writable, or is others writable, as import "
                     "file(or directory), permission should not be over 0o755(rwxr-xr-x)")
        return False
    if not os.access(os.path.realpath(path), os.R_OK) or not status.st_mode & stat.S_IRUSR:
        logger.error(f"Current user doesn't have read permission to the file {path}, as import "
                     "file(or directory), permission should be at least 0o400(r--------) ")
        return False
    return True


def check_path_legality(path: str, max_size: int, suffix: list[str]) -> None:
    absolute = os.path.abspath(path)
    if not _legal_string(absolute):
        raise ValueError("The path string is illegal. Please check.")
    if not os.path.isfile(absolute):
        raise ValueError(f"The path:{path} is not a file.")
    if not _legal_for_reading(absolute):
        raise ValueError(f"The path:{path} is illegal. Please check the error log for more "
                         "detail.")
    if os.path.splitext(absolute)[1] not in [f".{s}" for s in suffix]:
        logger.error(f"path:{absolute}, file type not in {suffix}")
        raise ValueError(f"The suffix of path:{path} not in {suffix}. Please check.")
    if os.path.getsize(absolute) > max_size:
        raise ValueError(f"The file:{path} size is larger than {max_size}. Please check.")


def check_model_path_legality(value: str) -> None:
    if not value:
        raise RuntimeError("empty model path!")
    check_path_legality(value, OM_MODEL_MAX_SIZE, ["om"])


def check_acl_json_path_legality(value: str | None) -> None:
    if value:
        check_path_legality(value, ACL_JSON_MAX_SIZE, ["json"])


def check_device_range_valid(value: object) -> None:
    if not isinstance(value, int):
        raise TypeError(f"device:{value} is not a integer!")
    if value < 0 or value > 255:
        raise ValueError(f"device:{value} is illegal. legal value range is [0, 255]")


def check_list(values: object, max_len: int, allow_empty: bool = True) -> None:
    if not isinstance(values, list):
        raise ValueError("the list be checked is not a list!")
    if not allow_empty and not values:
        raise ValueError("the list is empty")
    if len(values) > max_len:
        raise ValueError(f"the list's length is over {max_len}!")


def check_custom_size(value: object, mode: str = "dymshape") -> None:
    if mode not in ("static", "dymbatch", "dymhw", "dymdims", "dymshape"):
        raise ValueError("infer mode is illegal, Please check.")
    if value is None:
        if mode == "dymshape":
            raise ValueError(f"custom_size:{value} dismatch with mode. Please check.")
        return
    values = value if isinstance(value, list) else [value]
    for size in values:
        if not isinstance(size, int):
            raise TypeError(f"value:{value} is not a integer!")
        if size <= 0 or size > CUSTOM_SIZE_MAX:
            raise ValueError(f"custom size value:{value} is out of range. Please check.")
