/* The ring-buffer read of orchestrator/bpf/ringreader.py in C, for the compiled hot path: the same
 * walk over the kernel's mapping (layout in ringreader.py), with no Python call per record.
 *
 * drain(data, consumer, page, mask) -> list[bytes]
 *   data:     the mapping of the producer page and the data area twice (read only)
 *   consumer: the mapping of the consumer page (written: the consumer position at offset 0)
 *   page:     the page size; mask: the data area's size - 1 (a power of two)
 * Returns every committed record, in order, each copied out; the consumer position is stored
 * (release) every 64 records and at the end, as the Python reader does. When memory runs out the
 * records copied so far are returned and the rest stay in the ring for the next call: nothing is
 * consumed that was not handed over. A record longer than the ring (never written by the kernel)
 * raises RuntimeError, once the records before it have been handed over.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define BUSY (1u << 31)
#define DISCARD (1u << 30)
#define HEADER 8
#define RELEASE_EVERY_MASK 63

static PyObject *drain(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "drain(data, consumer, page, mask)");
        return NULL;
    }
    Py_ssize_t page = PyLong_AsSsize_t(args[2]);
    Py_ssize_t mask = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (page <= 0 || mask <= 0 || (mask & (mask + 1))) {
        PyErr_SetString(PyExc_ValueError, "drain: bad page size or mask");
        return NULL;
    }
    Py_buffer data, cons;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &cons, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *out = NULL;
    if (data.len < page + 2 * (mask + 1) || cons.len < (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "drain: the mappings are smaller than the ring");
        goto done;
    }
    out = PyList_New(0);
    if (!out) goto done;

    uint64_t *consumer = (uint64_t *)cons.buf;
    const uint64_t *producer = (const uint64_t *)data.buf;
    const char *area = (const char *)data.buf + page;
    uint64_t pos = __atomic_load_n(consumer, __ATOMIC_RELAXED);     /* only this reader writes it */
    uint64_t end = __atomic_load_n(producer, __ATOMIC_ACQUIRE);
    Py_ssize_t n = 0;
    while (pos < end) {
        const char *rec = area + (pos & (uint64_t)mask);
        uint32_t word = __atomic_load_n((const uint32_t *)rec, __ATOMIC_ACQUIRE);
        if (word & BUSY)
            break;                 /* reserved, not yet committed: later records wait for it */
        uint32_t length = word & ~(BUSY | DISCARD);
        if ((Py_ssize_t)length > mask + 1 - HEADER) {
            if (n)
                break;             /* hand over what came before; the next call stops here */
            Py_CLEAR(out);
            PyErr_Format(PyExc_RuntimeError, "ring buffer record of %u bytes in a %zd-byte ring", length, mask + 1);
            goto done;
        }
        uint64_t next = pos + ((length + HEADER + 7) & ~7u);
        if (!(word & DISCARD)) {
            PyObject *raw = PyBytes_FromStringAndSize(rec + HEADER, length);   /* a copy: the space is freed */
            if (!raw || PyList_Append(out, raw) < 0) {
                Py_XDECREF(raw);
                PyErr_Clear();     /* keep what was copied; this record and the rest stay for next time */
                break;
            }
            Py_DECREF(raw);
            n++;
            if (!(n & RELEASE_EVERY_MASK))
                __atomic_store_n(consumer, next, __ATOMIC_RELEASE);
        }
        pos = next;
    }
    __atomic_store_n(consumer, pos, __ATOMIC_RELEASE);
done:
    PyBuffer_Release(&cons);
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef methods[] = {
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL, "drain(data, consumer, page, mask) -> list[bytes]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ring_accel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_ring_accel(void) {
    return PyModule_Create(&module);
}
