"""`python -m cuelog.actors._projector_process DATA_DIR`: the projector process a server starts
(see `cuelog.actors._projector`)."""

from cuelog.actors._projector import main

if __name__ == "__main__":
    raise SystemExit(main())
