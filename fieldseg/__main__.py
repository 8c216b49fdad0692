"""Allow ``python -m fieldseg``."""

from __future__ import annotations

from fieldseg.cli import main

if __name__ == "__main__":
    main()
