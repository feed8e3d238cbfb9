/* Recursive STA/LTA of a (channels x samples) chunk with carried state: the compiled fast path of
 * ims_station.edge.trigger.RecursiveStaLta (reference: trigger.recstalta_reference, cross-checked in
 * tests/trigger/test_kernel.py).
 *
 * Why C: the recursion is sequential in time, so numpy can only vectorise across the channels of a
 * chunk (one interpreted step per sample) and scipy's lfilter pays its per-call overhead on every
 * 1-s chunk; neither reaches ObsPy's own C loop (issue 9).  The arithmetic is ObsPy's recstalta, term
 * for term, so the results are the same doubles:
 *     sta = csta * x*x + (1 - csta) * sta;  lta = clta * x*x + (1 - clta) * lta;  cf = sta / lta
 * with sample 0 of a stream skipped and outputs before sample nlta set to 0.
 *
 * Buffers come through the buffer protocol (no numpy C API at build time); shapes and formats are
 * checked here, the caller (trigger.py) allocates them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define LANES 4
/* one time step of the LANES chains, written out so the state stays in registers */
#define STEP_FROM(J0)                                                                   \
    for (Py_ssize_t j = (J0); j < m; j++) {                                             \
        const double q0 = a[0][j] * a[0][j], q1 = a[1][j] * a[1][j];                    \
        const double q2 = a[2][j] * a[2][j], q3 = a[3][j] * a[3][j];                    \
        s[0] = csta * q0 + icsta * s[0]; l[0] = clta * q0 + iclta * l[0];               \
        s[1] = csta * q1 + icsta * s[1]; l[1] = clta * q1 + iclta * l[1];               \
        s[2] = csta * q2 + icsta * s[2]; l[2] = clta * q2 + iclta * l[2];               \
        s[3] = csta * q3 + icsta * s[3]; l[3] = clta * q3 + iclta * l[3];               \
        pn[0][j] = s[0]; pd[0][j] = l[0]; pn[1][j] = s[1]; pd[1][j] = l[1];             \
        pn[2][j] = s[2]; pd[2][j] = l[2]; pn[3][j] = s[3]; pd[3][j] = l[3];             \
    }

/* cf[i] /= den[i]: the bulk of the kernel's time is division throughput, twice as high with AVX
 * as with the SSE2 baseline; where GCC supports it, the loader picks the AVX clone at run time
 * (IEEE division either way: the same doubles). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx", "default")))
#endif
static void divide(double *restrict num, const double *restrict den, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        num[i] = num[i] / den[i];
}

static int get(PyObject *obj, Py_buffer *view, int writable, const char *fmt, Py_ssize_t n,
               const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    int fmt_ok = view->format != NULL &&
        (strcmp(view->format, fmt) == 0 ||
         (fmt[0] == 'l' && (strcmp(view->format, "q") == 0 || strcmp(view->format, "<q") == 0 ||
                            strcmp(view->format, "<l") == 0)) ||
         (fmt[0] == 'd' && strcmp(view->format, "<d") == 0));
    if (view->itemsize != 8 || !fmt_ok || view->len != n * 8) {
        PyErr_Format(PyExc_ValueError, "recstalta: %s must be a C-contiguous buffer of %zd %s",
                     what, n, fmt[0] == 'd' ? "float64" : "int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_recstalta(PyObject *self, PyObject *args)
{
    PyObject *ox, *oout, *osta, *olta, *on;
    Py_ssize_t channels, m, nsta, nlta;
    Py_buffer x, out, sta, lta, n;
    int all_finite = 1;
    if (!PyArg_ParseTuple(args, "OOOOOnn", &ox, &oout, &osta, &olta, &on, &nsta, &nlta))
        return NULL;
    if (nsta < 1 || nlta < 1) {
        PyErr_SetString(PyExc_ValueError, "recstalta: nsta and nlta must be >= 1");
        return NULL;
    }
    /* the channel count comes from the state vector */
    if (PyObject_GetBuffer(osta, &sta, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return NULL;
    channels = sta.len / 8;
    PyBuffer_Release(&sta);
    if (PyObject_GetBuffer(ox, &x, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    m = channels ? x.len / 8 / channels : 0;
    PyBuffer_Release(&x);
    if (get(ox, &x, 0, "d", channels * m, "x") < 0)
        return NULL;
    if (get(oout, &out, 1, "d", channels * m, "out") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get(osta, &sta, 1, "d", channels, "sta") < 0) goto fail2;
    if (get(olta, &lta, 1, "d", channels, "lta") < 0) goto fail3;
    if (get(on, &n, 1, "l", channels, "n") < 0) goto fail4;

    {
        const double *xs = (const double *)x.buf;
        double *cf = (double *)out.buf;
        double *st = (double *)sta.buf, *lt = (double *)lta.buf;
        int64_t *cnt = (int64_t *)n.buf;
        const double csta = 1. / (double)nsta, clta = 1. / (double)nlta;
        const double icsta = 1. - csta, iclta = 1. - clta;

        double *den = PyMem_RawMalloc((channels * m + 2 * channels + 1) * sizeof(double));
        if (den == NULL) {
            PyErr_NoMemory();
            goto fail5;
        }
        double *new_s = den + channels * m, *new_l = new_s + channels;
        Py_BEGIN_ALLOW_THREADS
        /* Channels are independent: stepping LANES of them together in time gives the CPU LANES
         * independent dependency chains (one channel's recursion alone is latency-bound), with the
         * state in registers; numerator and denominator are stored and the divisions done after,
         * off the chains, over contiguous memory (vectorised). */
        for (Py_ssize_t c0 = 0; c0 < channels; c0 += LANES) {
            double s[LANES], l[LANES];
            const double *a[LANES];
            double *pn[LANES], *pd[LANES];
            Py_ssize_t j0[LANES];
            for (Py_ssize_t k = 0; k < LANES; k++) {
                /* a short last group repeats its last channel: same inputs, same (unused) output */
                const Py_ssize_t c = c0 + k < channels ? c0 + k : channels - 1;
                s[k] = st[c];
                l[k] = lt[c];
                a[k] = xs + c * m;
                pn[k] = cf + c * m;
                pd[k] = den + c * m;
                j0[k] = cnt[c] == 0 && m > 0;   /* ObsPy's loop starts at sample 1 */
                if (j0[k]) {
                    pn[k][0] = s[k];
                    pd[k][0] = l[k];
                }
            }
            if (j0[0] | j0[1] | j0[2] | j0[3]) {   /* rare: a stream's first chunk */
                for (Py_ssize_t k = 0; k < LANES; k++)
                    if (!j0[k] && m > 0) {
                        const double sq = a[k][0] * a[k][0];
                        s[k] = csta * sq + icsta * s[k];
                        l[k] = clta * sq + iclta * l[k];
                        pn[k][0] = s[k];
                        pd[k][0] = l[k];
                    }
                STEP_FROM(1)
            } else {
                STEP_FROM(0)
            }
            for (Py_ssize_t k = 0; k < LANES && c0 + k < channels; k++) {
                new_s[c0 + k] = s[k];
                new_l[c0 + k] = l[k];
                /* NaN and inf never leave the recursion: a non-finite state means non-finite input
                 * (or a square beyond the double range) in this chunk */
                if (!isfinite(s[k]) || !isfinite(l[k]))
                    all_finite = 0;
            }
        }
        divide(cf, den, channels * m);
        /* The LTA starts at 1e-99 and is never below (1 - 1/nlta) times its last value, so with
         * nlta >= 3 rounding keeps it at least the smallest double.  With nlta = 2 a factor 1/2
         * rounds that to 0 on exact zeros (a dead channel): read 0/0 as 0 there. */
        if (nlta == 2)
            for (Py_ssize_t at = 0; at < channels * m; at++)
                if (den[at] == 0.)
                    cf[at] = 0.;
        for (Py_ssize_t c = 0; c < channels; c++)      /* warm-up: ObsPy outputs 0 before nlta */
            for (Py_ssize_t j = 0; j < m && cnt[c] + j < nlta; j++)
                cf[c * m + j] = 0.;
        /* the state is committed only for an all-finite chunk; otherwise the caller takes its
         * general path (reset after the bad sample) from the unchanged state */
        for (Py_ssize_t c = 0; all_finite && c < channels; c++) {
            st[c] = new_s[c];
            lt[c] = new_l[c];
            cnt[c] += m;
        }
        Py_END_ALLOW_THREADS
        PyMem_RawFree(den);
    }
    PyBuffer_Release(&n);
    PyBuffer_Release(&lta);
    PyBuffer_Release(&sta);
    PyBuffer_Release(&out);
    PyBuffer_Release(&x);
    return PyBool_FromLong(all_finite);
fail5:
    PyBuffer_Release(&n);
fail4:
    PyBuffer_Release(&lta);
fail3:
    PyBuffer_Release(&sta);
fail2:
    PyBuffer_Release(&out);
    PyBuffer_Release(&x);
    return NULL;
}

static PyMethodDef methods[] = {
    {"recstalta", py_recstalta, METH_VARARGS,
     "recstalta(x, out, sta, lta, n, nsta, nlta) -> bool; (channels, m) float64 chunk; True: state "
     "updated; False: non-finite state, nothing updated (out is garbage)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_triggerfast",
    "Recursive STA/LTA kernel (C fast path of ims_station.edge.trigger)", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__triggerfast(void)
{
    return PyModule_Create(&module);
}
