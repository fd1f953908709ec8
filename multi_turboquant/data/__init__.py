"""Package data. calibration_text.txt is CPython's LICENSE (Python 3.11, /usr/lib/python3.11/LICENSE.txt from
Debian's python3.11 package), copied verbatim: the history of Python and the PSF, CNRI, BeOpen and CWI license
texts, which permit verbatim redistribution. It is the built-in text of automatic calibration
(multi_turboquant/eval/autocal.py); the evaluation corpus (multi_turboquant/eval/corpus.py, Debian's
/usr/share/common-licenses) does not contain it, so calibrating on it never sees the text a quality number is
measured on."""
