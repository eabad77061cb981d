// zlib, for its CRC-32 (the journal's record checksum): the system's library, several times faster
// than a table-driven loop in Swift.
#ifndef PARALLELVM_CZLIB_SHIM_H
#define PARALLELVM_CZLIB_SHIM_H

#include <zlib.h>

#endif
