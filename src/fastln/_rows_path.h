/* Instantiates _rows_impl.h for float, double, and float16 and bfloat16 data (computed in
 * float, with _half_impl.h's conversions), on the path that the includer (_rows.h) describes with
 * FASTLN_PATH, TARGET and REGISTER_BYTES, then forgets that path. With FASTLN_NATIVE_BF16, only
 * for bfloat16 (the path's other kernels are another path's). */
#if !FASTLN_NATIVE_BF16
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
#endif
#define FASTLN_TS half
#include "_half_impl.h"
#undef FASTLN_TS
#define T float
#if !FASTLN_NATIVE_BF16
#define FASTLN_TS f16
#define FASTLN_HALF 1
#include "_rows_impl.h"
#undef FASTLN_HALF
#undef FASTLN_TS
#endif
#define FASTLN_TS bf16
#define FASTLN_HALF 2
#include "_rows_impl.h"
#undef FASTLN_HALF
#undef FASTLN_TS
#undef T
#undef REGISTER_BYTES
#undef TARGET
#undef FASTLN_PATH
