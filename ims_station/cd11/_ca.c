/*
 * Canadian compression (CA) for CD-1.1: the fast path of ims_station.cd11.ca.
 *
 * The same algorithm, step for step, as encode_reference / decode_reference in ca.py (read those
 * and the spec, cd11.md section 5, first); tests cross-check both on real frames and random input.
 * Built by setup.py as an optional extension: if it is missing, ca.py uses the Python reference.
 *
 * No numpy headers: samples come and go through the buffer protocol (int32, native byte order), so
 * building needs only a C compiler and the Python headers.  The loops run without the GIL.
 *
 *   encode(int32 buffer) -> bytes            raises OverflowError(k) if second difference k does
 *                                            not fit 32 bits
 *   decode(data, nsamples, out int32 buffer) -> None, or (offset, reason) if the stream is invalid
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 20
#define GROUP 4
#define NARROW_MAX 18
#define MIN_BYTES_PER_BLOCK 12

/* Bits needed for v in two's complement, rounded up to an even width >= 4. */
static inline int ca_width(int64_t v)
{
    uint64_t u = (uint64_t)(v < 0 ? ~v : v);
    int bits = 1;
#if defined(__GNUC__) || defined(__clang__)
    if (u)
        bits = 65 - __builtin_clzll(u);
#else
    while (u) {
        bits++;
        u >>= 1;
    }
#endif
    bits += bits & 1;
    return bits < 4 ? 4 : bits;
}

/* Returns the output length, or -1 - k if second difference k does not fit 32 bits. */
static Py_ssize_t ca_encode(const int32_t *x, Py_ssize_t n, uint8_t *out)
{
    Py_ssize_t nblocks = n / BLOCK;
    uint8_t *index = out;
    uint8_t *p = out + 2 * nblocks;
    int64_t d1_prev = 0;
    int64_t d2[BLOCK];
    Py_ssize_t b, k;
    int g, i;

    p[0] = (uint8_t)((uint32_t)x[0] >> 24);
    p[1] = (uint8_t)((uint32_t)x[0] >> 16);
    p[2] = (uint8_t)((uint32_t)x[0] >> 8);
    p[3] = (uint8_t)x[0];
    p += 4;
    for (b = 0; b < nblocks; b++) {
        int widths[5];
        int maxw = 0;
        unsigned word;
        for (i = 0; i < BLOCK; i++) {
            k = b * BLOCK + i;
            /* last first difference: v0 = 2*x[n-1] - x[n-2], so it repeats the one before */
            int64_t d1 = k < n - 1 ? (int64_t)x[k + 1] - x[k] : d1_prev;
            int64_t v = k == 0 ? d1 : d1 - d1_prev;
            if (v < INT32_MIN || v > INT32_MAX)
                return -1 - k;
            d2[i] = v;
            d1_prev = d1;
        }
        for (g = 0; g < 5; g++) {
            int w = 4;
            for (i = 0; i < GROUP; i++) {
                int wi = ca_width(d2[g * GROUP + i]);
                if (wi > w)
                    w = wi;
            }
            widths[g] = w;
            if (w > maxw)
                maxw = w;
        }
        if (maxw <= NARROW_MAX) {
            word = 0;
            for (g = 0; g < 5; g++)
                word |= (unsigned)((widths[g] - 4) / 2) << (12 - 3 * g);
        } else {
            word = 0x8000;
            for (g = 0; g < 5; g++) {
                widths[g] = (widths[g] + 3) / 4 * 4;
                word |= (unsigned)((widths[g] - 4) / 4) << (12 - 3 * g);
            }
        }
        index[2 * b] = (uint8_t)(word >> 8);
        index[2 * b + 1] = (uint8_t)word;
        for (g = 0; g < 5; g++) {
            int w = widths[g];
            uint64_t mask = (w == 64) ? ~(uint64_t)0 : (((uint64_t)1 << w) - 1);
            uint64_t acc = 0;
            int nbits = 0;
            for (i = 0; i < GROUP; i++) {
                acc = (acc << w) | ((uint64_t)d2[g * GROUP + i] & mask);
                nbits += w;
                while (nbits >= 8) {
                    nbits -= 8;
                    *p++ = (uint8_t)(acc >> nbits);
                }
            }
        }
    }
    return p - out;
}

/* Decode; returns NULL on success, else a static reason and sets *err_offset. */
static const char *ca_decode(const uint8_t *data, Py_ssize_t len, Py_ssize_t n, int32_t *out,
                             Py_ssize_t *err_offset)
{
    Py_ssize_t nblocks = n / BLOCK;
    Py_ssize_t pos = 2 * nblocks + 4;
    Py_ssize_t b, k = 0;
    int64_t x, d1 = 0;
    int g, i;

    x = (int32_t)(((uint32_t)data[pos - 4] << 24) | ((uint32_t)data[pos - 3] << 16) |
                  ((uint32_t)data[pos - 2] << 8) | (uint32_t)data[pos - 1]);
    out[0] = (int32_t)x;
    for (b = 0; b < nblocks; b++) {
        unsigned word = ((unsigned)data[2 * b] << 8) | data[2 * b + 1];
        int wide = (word & 0x8000) != 0;
        for (g = 0; g < 5; g++) {
            unsigned code = (word >> (12 - 3 * g)) & 7;
            int w = wide ? 4 + 4 * (int)code : 4 + 2 * (int)code;
            Py_ssize_t size = w / 2;
            uint64_t mask = ((uint64_t)1 << w) - 1;
            uint64_t acc = 0;
            int nbits = 0;
            const uint8_t *p = data + pos;
            if (pos + size > len) {
                *err_offset = pos;
                return "a group runs past the end of the data";
            }
            for (i = 0; i < GROUP; i++) {
                int64_t v;
                while (nbits < w) {
                    acc = (acc << 8) | *p++;
                    nbits += 8;
                }
                nbits -= w;
                v = (int64_t)((acc >> nbits) & mask);
                if (v >> (w - 1))
                    v -= (int64_t)1 << w;
                d1 += v;
                if (k < n - 1) {
                    x += d1;
                    if (x < INT32_MIN || x > INT32_MAX) {
                        *err_offset = pos;
                        return "a sample decodes outside int32";
                    }
                    out[k + 1] = (int32_t)x;
                }
                k++;
            }
            pos += size;
        }
    }
    {
        int stray = len - pos >= 4;
        Py_ssize_t j;
        for (j = pos; j < len && !stray; j++)
            stray = data[j] != 0;
        if (stray) {
            *err_offset = pos;
            return "bytes left after the end of the CA stream (not NUL padding to 4)";
        }
    }
    return NULL;
}

static PyObject *py_encode(PyObject *self, PyObject *args)
{
    Py_buffer in;
    Py_ssize_t n, len;
    uint8_t *out;
    PyObject *result;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*", &in))
        return NULL;
    if (in.len % 4) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_TypeError, "encode: need an int32 buffer");
        return NULL;
    }
    n = in.len / 4;
    if (n == 0 || n % BLOCK) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "encode: sample count must be a positive multiple of 20");
        return NULL;
    }
    /* worst case: index words, first sample, 32 bits per value */
    out = PyMem_Malloc((size_t)(n / 10 + 4 + 4 * n));
    if (!out) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    len = ca_encode((const int32_t *)in.buf, n, out);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    if (len < 0) {
        PyMem_Free(out);
        PyErr_SetObject(PyExc_OverflowError, PyLong_FromSsize_t(-1 - len));
        return NULL;
    }
    result = PyBytes_FromStringAndSize((const char *)out, len);
    PyMem_Free(out);
    return result;
}

static PyObject *py_decode(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    Py_ssize_t n, err_offset = 0;
    const char *reason;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*nw*", &data, &n, &out))
        return NULL;
    /* ca.py checks the count against the length before allocating *out*; check again here so this
     * function is safe on its own. */
    if (n <= 0 || n % BLOCK || (n / BLOCK) * MIN_BYTES_PER_BLOCK + 4 > data.len || out.len < n * 4) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "decode: invalid sample count or output buffer");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    reason = ca_decode((const uint8_t *)data.buf, data.len, n, (int32_t *)out.buf, &err_offset);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (reason)
        return Py_BuildValue("(ns)", err_offset, reason);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS, "encode(int32 buffer) -> bytes"},
    {"decode", py_decode, METH_VARARGS,
     "decode(data, nsamples, out) -> None or (offset, reason)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cafast", "Canadian compression (C fast path of ims_station.cd11.ca)",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cafast(void)
{
    return PyModule_Create(&module);
}
