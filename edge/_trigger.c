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

        double *buf = PyMem_RawMalloc((3 * BLOCK * (m + 1) + 2 * channels) * sizeof(double));
        double *new_s = buf + 3 * BLOCK * (m + 1), *new_l = new_s + channels;
        if (buf == NULL) {
            PyErr_NoMemory();
            goto fail5;
        }
        Py_BEGIN_ALLOW_THREADS
        /* Channels are independent: BLOCK of them are transposed into a (sample, channel) buffer
         * and stepped together in time, which turns one channel's latency-bound recursion into
         * BLOCK parallel chains the compiler vectorises; the divisions come after, off the chains. */
        for (Py_ssize_t c0 = 0; c0 < channels; c0 += BLOCK) {
            const Py_ssize_t nb = channels - c0 < BLOCK ? channels - c0 : BLOCK;
            double *tx = buf, *tn = buf + BLOCK * (m + 1), *td = buf + 2 * BLOCK * (m + 1);
            double s[BLOCK], l[BLOCK], first[BLOCK];
            for (Py_ssize_t k = 0; k < BLOCK; k++) {
                const int live = k < nb;
                s[k] = live ? st[c0 + k] : 0.;
                l[k] = live ? lt[c0 + k] : 1.;
                first[k] = live && cnt[c0 + k] == 0 ? 0. : 1.;
            }
            for (Py_ssize_t k = 0; k < BLOCK; k++)
                for (Py_ssize_t j = 0; j < m; j++)
                    tx[j * BLOCK + k] = k < nb ? xs[(c0 + k) * m + j] : 0.;
            for (Py_ssize_t j = 0; j < m; j++) {
                const double *restrict a = tx + j * BLOCK;
                double *restrict pn = tn + j * BLOCK, *restrict pd = td + j * BLOCK;
                for (Py_ssize_t k = 0; k < BLOCK; k++) {
                    const double sq = a[k] * a[k];
                    const double ns = csta * sq + icsta * s[k];
                    const double nl = clta * sq + iclta * l[k];
                    /* ObsPy's loop starts at sample 1: a stream's sample 0 leaves the state */
                    const int keep = j == 0 && first[k] == 0.;
                    s[k] = keep ? s[k] : ns;
                    l[k] = keep ? l[k] : nl;
                    pn[k] = s[k];
                    pd[k] = l[k];
                }
            }
            for (Py_ssize_t at = 0; at < m * BLOCK; at++)
                tn[at] = tn[at] / td[at];
            for (Py_ssize_t k = 0; k < nb; k++) {
                double *o = cf + (c0 + k) * m;
                const int64_t i0 = cnt[c0 + k];
                for (Py_ssize_t j = 0; j < m; j++)
                    o[j] = tn[j * BLOCK + k];
                for (Py_ssize_t j = 0; j < m && i0 + j < nlta; j++)   /* ObsPy: 0 before nlta */
                    o[j] = 0.;
                new_s[c0 + k] = s[k];
                new_l[c0 + k] = l[k];
                /* NaN and inf never leave the recursion: a non-finite state means non-finite input
                 * (or a square beyond the double range) in this chunk */
                if (!isfinite(s[k]) || !isfinite(l[k]))
                    all_finite = 0;
            }
        }
        /* the state is committed only for an all-finite chunk; otherwise the caller takes its
         * general path (reset after the bad sample) from the unchanged state */
        for (Py_ssize_t c = 0; all_finite && c < channels; c++) {
            st[c] = new_s[c];
            lt[c] = new_l[c];
            cnt[c] += m;
        }
        Py_END_ALLOW_THREADS
        PyMem_RawFree(buf);
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
