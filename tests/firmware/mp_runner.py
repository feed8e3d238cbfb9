# Runs every case of fwcases.py under the MicroPython unix port and reports "RAN n FAILED m".
# Launched by test_micropython.py with MICROPYPATH = <dir holding imsfw -> firmware/ and the frozen
# board_config.py>:<this folder>.  Usage: micropython mp_runner.py vectors.json

import sys
import json

import fwcases
from board_config import BOARD


def main():
    with open(sys.argv[1]) as f:
        vectors = json.load(f)
    fwcases.setup(vectors, BOARD)
    ran = 0
    failed = 0
    for name in fwcases.cases():
        ran += 1
        try:
            getattr(fwcases, name)()
            print("PASS", name)
        except Exception as err:  # report every failure, then go on
            failed += 1
            print("FAIL", name)
            sys.print_exception(err)
    print("RAN %d FAILED %d" % (ran, failed))
    sys.exit(1 if failed or ran == 0 else 0)


main()
