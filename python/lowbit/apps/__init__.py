"""Applications built on the library: the ``lowbit`` command line
(:mod:`lowbit.apps.cli`), the Fashion-MNIST demo (:mod:`lowbit.apps.demo`), batch
scoring of files (:mod:`lowbit.apps.scoring`) and its Ray Data scale-out
(:mod:`lowbit.apps.ray`). Each is also reachable by its short name
(``lowbit.cli``, ``lowbit.demo``, ``lowbit.scoring``, ``lowbit.ray``)."""
