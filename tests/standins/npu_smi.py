"""Stand-in for the NPU driver's `npu-smi info`: the table layout of driver 23.0, one NPU row
and one chip row per NPU, chip names from $NPU_SMI_STANDIN_CHIPS (comma-separated, default
310P3). Calls are appended to $RUNNER_STANDIN_LOG."""

import json
import os
import sys

HEADER = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.6                   Version: 23.0.6                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+"""
NPU_ROW = ("| {npu:<6}{name:<20}| OK            "
           "| 95.9        39                0    / 0             |")
CHIP_ROW = ("| 0                         | 0000:C{npu}:00.0  "
            "| 0           0    / 0          3393 / 65536         |")
SEPARATOR = HEADER.splitlines()[-1]
LAST_RULE = HEADER.splitlines()[2]


def main(argv: list[str]) -> None:
    log = os.environ.get("RUNNER_STANDIN_LOG")
    if log:
        with open(log, "a") as stream:
            stream.write(json.dumps({"tool": "npu-smi", "argv": argv}) + "\n")
    if argv != ["info"]:
        print("Usage: npu-smi info (this stand-in knows no other command)")
        sys.exit(1)
    chips = os.environ.get("NPU_SMI_STANDIN_CHIPS", "310P3").split(",")
    print(HEADER)
    for npu, name in enumerate(chips):
        print(NPU_ROW.format(npu=npu, name=name))
        print(CHIP_ROW.format(npu=npu))
        print(SEPARATOR if npu + 1 < len(chips) else LAST_RULE)


if __name__ == "__main__":
    main(sys.argv[1:])
