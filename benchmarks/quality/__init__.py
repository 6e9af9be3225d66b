"""Quality benchmark of GUIDE: does emphasis make a small model follow an instruction or find a fact?

``python -m benchmarks.quality --quick`` runs a few-minute grid; see :mod:`benchmarks.quality.__main__`.
Modules: :mod:`.data` (texts and prompts), :mod:`.metrics` (scoring one output), :mod:`.stats`
(Wilson intervals, McNemar, ROC AUC), :mod:`.scoring` (teacher-forced openings and Influence),
:mod:`.french` and :mod:`.needle` (the tasks), :mod:`.report` (tables and plots).
"""
