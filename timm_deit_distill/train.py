"""Compatibility entry point, not library code: ``python -m timm_deit_distill.train ...`` and
``torchrun ... -m timm_deit_distill.train ...`` run `deit-distill train` (:mod:`timm_deit_distill.commands.train`).

Kept because the README documents both spellings; importing this module does nothing.
"""

if __name__ == "__main__":
    import sys

    from .commands.train import main

    sys.exit(main())
