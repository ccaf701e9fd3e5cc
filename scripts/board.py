#!/usr/bin/env python3
"""The emulated aarch64 board (Raspberry Pi 4/5 stand-in) for RPC runs without hardware.

    python scripts/board.py setup                      # build ./.board (Debian arm64 python + apache-tvm, qemu)
    python scripts/board.py start [--cpu cortex-a76]   # tracker + board server on 127.0.0.1 (prints the ports)
    python scripts/board.py status | restart | stop
    python scripts/board.py selftest                   # setup, start, int8 run bit-exact vs x86, stop
    python scripts/board.py selftest --cpu cortex-a76 --models resnet18 squeezenet1_1 mobilenet_v2 resnet20-cifar
        # and every built-in model, int8 for the board (rasp5 here; rasp4b on cortex-a72) vs x86, bit for bit

Then: python -m isquant_tvm bench model.so --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4b
The root is ./.board (or --root, or $ISQUANT_BOARD_ROOT). See isquant_tvm/board.py and docs/raspberry-pi.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isquant_tvm.tools.board import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(prog="python scripts/board.py"))
