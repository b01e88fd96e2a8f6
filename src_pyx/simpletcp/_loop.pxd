# Cython finds the declarations of the module simpletcp._loop (built from ../loop.pyx)
# by its dotted name, here; they live in ../loop.pxd, the one header of the loop.
include "loop.pxd"
