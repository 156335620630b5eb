"""Stand-in for the NPU driver's `npu-smi info`.

npu-smi is closed source; the layouts follow the tables printed in Huawei's npu-smi manuals and
product guides (driver 23.0): one NPU row per NPU (card or module) with its Name, then one row per
chip of that NPU, then a process table.
- One chip per NPU (Ascend 910B modules, $NPU_SMI_STANDIN_CHIPS_PER_NPU=1, the default): the
  second header line is `Chip`, a chip row carries the chip id only, and the NPU id is the device
  id (0, 1, ...).
- Several chips per NPU (Atlas 300I Duo: two 310P3 per card; Atlas 300I: four 310 per card): the
  second header line is `Chip    Device`, a chip row carries the chip id and the logical device
  id that `aclrtSetDevice` / ais_bench's device_id take, and NPU ids (1, 2, ...) are not device
  ids. So an NPU's Name names all its chips, and device 1 may be chip 1 of NPU 1.
The process table's rows also start with two numbers (`NPU  Chip`); a parser must not read them
as chips.

$NPU_SMI_STANDIN_CHIPS: the NPUs' names, comma-separated (default 310P3). Calls are appended to
$RUNNER_STANDIN_LOG.
"""

import json
import os
import sys

WIDE = "+" + "-" * 31 + "+" + "-" * 17 + "+" + "-" * 54 + "+"
DOUBLE = "+" + "=" * 31 + "+" + "=" * 17 + "+" + "=" * 54 + "+"


def row(first: str, second: str, third: str) -> str:
    return f"| {first:<30}| {second:<16}| {third:<53}|"


def main(argv: list[str]) -> None:
    log = os.environ.get("RUNNER_STANDIN_LOG")
    if log:
        with open(log, "a") as stream:
            stream.write(json.dumps({"tool": "npu-smi", "argv": argv}) + "\n")
    if argv != ["info"]:
        print("Usage: npu-smi info (this stand-in knows no other command)")
        sys.exit(1)
    names = os.environ.get("NPU_SMI_STANDIN_CHIPS", "310P3").split(",")
    per_npu = int(os.environ.get("NPU_SMI_STANDIN_CHIPS_PER_NPU", "1"))
    print("+" + "-" * 104 + "+")
    print(f"| {'npu-smi 23.0.6':<49}{'Version: 23.0.6':<54}|")
    print(WIDE)
    print(row("NPU     Name", "Health", "Power(W)     Temp(C)           Hugepages-Usage(page)"))
    print(row("Chip    Device" if per_npu > 1 else "Chip", "Bus-Id",
              "AICore(%)    Memory-Usage(MB)  HBM-Usage(MB)"))
    print(DOUBLE)
    device = 0
    npu_ids = []
    for index, name in enumerate(names):
        npu = index + 1 if per_npu > 1 else index
        npu_ids.append(npu)
        print(row(f"{npu:<8}{name}", "OK", "95.9         39                0    / 0"))
        for chip in range(per_npu):
            ids = f"{chip:<8}{device}" if per_npu > 1 else f"{chip}"
            print(row(ids, f"0000:{0xC1 + index:02X}:00.0", "0            1782 / 44280"))
            device += 1
        print(DOUBLE if index + 1 < len(names) else WIDE)
    print(WIDE)
    print(row("NPU     Chip", "Process id", "Process name             | Process memory(MB)"))
    print(DOUBLE)
    print(row(f"{npu_ids[0]:<8}0", "4242", "python3                  | 120"))
    for npu in npu_ids[1:]:
        print(f"| {f'No running processes found in NPU {npu}':<103}|")
    print(WIDE)


if __name__ == "__main__":
    main(sys.argv[1:])
