/* Instantiates _rows_impl.h for float and for double, and _half_impl.h once, on the path that
 * the includer (_rows.h) describes with FASTLN_PATH, TARGET and REGISTER_BYTES, then forgets
 * that path. */
#define T float
#define FASTLN_TS f32
#include "_rows_impl.h"
#undef T
#undef FASTLN_TS
#define T double
#define FASTLN_TS f64
#include "_rows_impl.h"
#undef T
#undef FASTLN_TS
#define FASTLN_TS half
#include "_half_impl.h"
#undef FASTLN_TS
#undef REGISTER_BYTES
#undef TARGET
#undef FASTLN_PATH
