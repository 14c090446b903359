"""The top floor: the `deit-distill` command line. Each module parses its flags (the argparse namespace lives
and dies here), turns them into the typed settings the factory and the library take, and reports every refusal
in one line (:mod:`.common`): :mod:`.cli` (`deit-distill`, `models`), :mod:`.train`, :mod:`.evaluate`,
:mod:`.cache` (`cache build`/`info`), :mod:`.hub` (`push`/`pull`), :mod:`.demo`; :mod:`.args` holds the train
parser, the recipes (``recipes/*.yaml``) and ``settings_from_args``.
"""
