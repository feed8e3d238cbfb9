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

#define BLOCK 8

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
        double *den = PyMem_RawMalloc(channels * m * sizeof(double) + 1);
        if (den == NULL) {
            PyErr_NoMemory();
            goto fail5;
        }
        Py_BEGIN_ALLOW_THREADS
        /* Channels are independent: stepping BLOCK of them together in time breaks the serial
         * dependency of one channel's recursion (latency-bound) into parallel chains. */
        for (Py_ssize_t c0 = 0; c0 < channels; c0 += BLOCK) {
            Py_ssize_t nb = channels - c0 < BLOCK ? channels - c0 : BLOCK;
            double s[BLOCK], l[BLOCK];
            int64_t i0[BLOCK];
            for (Py_ssize_t k = 0; k < nb; k++) {
                s[k] = st[c0 + k];
                l[k] = lt[c0 + k];
                i0[k] = cnt[c0 + k];
            }
            Py_ssize_t j0 = 0;
            for (Py_ssize_t k = 0; k < nb; k++)
                if (i0[k] == 0 && m > 0) {  /* ObsPy's loop starts at sample 1 */
                    j0 = 1;
                    break;
                }
            if (j0) {
                for (Py_ssize_t k = 0; k < nb; k++) {
                    const Py_ssize_t at = (c0 + k) * m;
                    if (i0[k] != 0) {
                        const double sq = xs[at] * xs[at];
                        s[k] = csta * sq + icsta * s[k];
                        l[k] = clta * sq + iclta * l[k];
                    }
                    cf[at] = s[k] / l[k];
                }
            }
            for (Py_ssize_t j = j0; j < m; j++) {
                for (Py_ssize_t k = 0; k < nb; k++) {
                    const Py_ssize_t at = (c0 + k) * m + j;
                    const double sq = xs[at] * xs[at];
                    s[k] = csta * sq + icsta * s[k];
                    l[k] = clta * sq + iclta * l[k];
                    cf[at] = s[k];
                    den[at] = l[k];
                }
            }
            /* the divisions, off the recursion and over contiguous memory (vectorised) */
            for (Py_ssize_t k = 0; k < nb; k++) {
                double *restrict num = cf + (c0 + k) * m;
                const double *restrict d = den + (c0 + k) * m;
                for (Py_ssize_t j = j0; j < m; j++)
                    num[j] = num[j] / d[j];
            }
            for (Py_ssize_t k = 0; k < nb; k++)      /* warm-up: ObsPy outputs 0 before nlta */
                for (Py_ssize_t j = 0; j < m && i0[k] + j < nlta; j++)
                    cf[(c0 + k) * m + j] = 0.;
            for (Py_ssize_t k = 0; k < nb; k++) {
                st[c0 + k] = s[k];
                lt[c0 + k] = l[k];
                cnt[c0 + k] = i0[k] + m;
            }
        }
        Py_END_ALLOW_THREADS
        PyMem_RawFree(den);
    }
    PyBuffer_Release(&n);
    PyBuffer_Release(&lta);
    PyBuffer_Release(&sta);
    PyBuffer_Release(&out);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
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
     "recstalta(x, out, sta, lta, n, nsta, nlta) -> None; (channels, m) float64 chunk, state updated"},
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
