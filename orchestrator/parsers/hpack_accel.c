/* HPACK header-block decoding (RFC 7541) in C for the compiled hot path: the common cases only.
 *
 * Decoder(static_table, huffman_codes, huffman_lengths, max_header_list_size) keeps one
 * direction's dynamic table; its tables come from the hpack library (http2.py passes them), so
 * both decoders share one definition of the static table and the Huffman code.
 *
 * decode(data) returns the block's [(name, value)] (bytes) exactly as hpack.Decoder.decode(data,
 * raw=True) would, and updates the dynamic table as hpack would; or None, with the table left as
 * it was before the call, whenever it meets anything it does not take: a table size update, a bad
 * index, a truncated block, odd Huffman padding, an oversized header list, a huge integer. The
 * caller then lets hpack decode that block from this decoder's state (`table`, `size`,
 * `maxsize`) and `load`s hpack's state back: errors and rare cases have one implementation, hpack's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"

#define ENTRY_OVERHEAD 32

/* Huffman decoding tree: node n has children tree[n][0], tree[n][1]; a leaf is -(symbol + 1). */
static int tree[512][2];
static int tree_nodes = 0;
static PyObject *static_table = NULL;     /* tuple of (name, value) */
static Py_ssize_t static_len = 0;

typedef struct {
    PyObject_HEAD
    PyObject *table;                 /* list of (name, value), newest first */
    Py_ssize_t size, maxsize, max_allowed_table_size, max_header_list_size;
} Decoder;

static Py_ssize_t entry_size(PyObject *entry) {
    return PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 0)) + PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 1)) + ENTRY_OVERHEAD;
}

/* An HPACK integer with a `prefix`-bit prefix at data[*pos]; -1: not one we take. */
static Py_ssize_t read_int(const unsigned char *data, Py_ssize_t len, Py_ssize_t *pos, int prefix) {
    if (*pos >= len) return -1;
    Py_ssize_t max = (1 << prefix) - 1;
    Py_ssize_t n = data[(*pos)++] & max;
    if (n < max) return n;
    for (int shift = 0; shift <= 21; shift += 7) {
        if (*pos >= len) return -1;
        unsigned char b = data[(*pos)++];
        n += (Py_ssize_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return n;
    }
    return -1;
}

/* A string literal at data[*pos] as new bytes; NULL with no error set: not one we take. */
static PyObject *read_string(const unsigned char *data, Py_ssize_t len, Py_ssize_t *pos) {
    if (*pos >= len) return NULL;
    int huffman = data[*pos] & 0x80;
    Py_ssize_t n = read_int(data, len, pos, 7);
    if (n < 0 || n > len - *pos) return NULL;
    const unsigned char *s = data + *pos;
    *pos += n;
    if (!huffman) return PyBytes_FromStringAndSize((const char *)s, n);
    /* at most 8/5 symbols per byte (the shortest code has 5 bits) */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 8 / 5 + 1);
    if (!out) return NULL;
    char *o = PyBytes_AS_STRING(out);
    Py_ssize_t k = 0;
    int node = 0, depth = 0, ones = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        for (int bit = 7; bit >= 0; bit--) {
            int b = (s[i] >> bit) & 1;
            int next = tree[node][b];
            if (next == 0) goto reject;
            depth++;
            ones &= b;
            if (next < 0) {
                int sym = -next - 1;
                if (sym == 256) goto reject;          /* EOS inside a string */
                o[k++] = (char)sym;
                node = 0;
                depth = 0;
                ones = 1;
            } else {
                node = next;
            }
        }
    }
    if (depth > 7 || !ones) goto reject;              /* padding: < 8 bits, all ones */
    if (_PyBytes_Resize(&out, k) < 0) return NULL;
    return out;
reject:
    Py_DECREF(out);
    return NULL;
}

static PyObject *entry_at(Decoder *d, Py_ssize_t index) {
    if (index < 1) return NULL;
    if (index <= static_len) return PyTuple_GET_ITEM(static_table, index - 1);
    index -= static_len + 1;
    if (index < PyList_GET_SIZE(d->table)) return PyList_GET_ITEM(d->table, index);
    return NULL;
}

/* hpack's HeaderTable.add: evict from the oldest end to fit, or empty the table for a huge entry. */
static int table_add(Decoder *d, PyObject *entry) {
    Py_ssize_t size = entry_size(entry);
    if (size > d->maxsize) {
        if (PyList_SetSlice(d->table, 0, PyList_GET_SIZE(d->table), NULL) < 0) return -1;
        d->size = 0;
        return 0;
    }
    if (PyList_Insert(d->table, 0, entry) < 0) return -1;
    d->size += size;
    while (d->size > d->maxsize) {
        Py_ssize_t last = PyList_GET_SIZE(d->table) - 1;
        d->size -= entry_size(PyList_GET_ITEM(d->table, last));
        if (PyList_SetSlice(d->table, last, last + 1, NULL) < 0) return -1;
    }
    return 0;
}

static PyObject *Decoder_decode(Decoder *d, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t len = view.len, pos = 0, inflated = 0, saved_size = d->size;
    PyObject *saved = NULL, *headers = PyList_New(0), *name = NULL, *value = NULL, *entry = NULL;
    if (!headers) goto error;
    while (pos < len) {
        unsigned char b = data[pos];
        if (b & 0x80) {                                     /* indexed field */
            entry = entry_at(d, read_int(data, len, &pos, 7));
            if (!entry) goto decline;
            Py_INCREF(entry);
        } else if ((b & 0xe0) == 0x20) {
            goto decline;                                   /* a table size update: hpack's */
        } else {
            int indexing = (b & 0xc0) == 0x40;
            Py_ssize_t index = read_int(data, len, &pos, indexing ? 6 : 4);
            if (index < 0) goto decline;
            if (index) {
                PyObject *named = entry_at(d, index);
                if (!named) goto decline;
                name = PyTuple_GET_ITEM(named, 0);
                Py_INCREF(name);
            } else if (!(name = read_string(data, len, &pos))) {
                goto maybe_error;
            }
            if (!(value = read_string(data, len, &pos))) goto maybe_error;
            entry = PyTuple_Pack(2, name, value);
            Py_CLEAR(name);
            Py_CLEAR(value);
            if (!entry) goto error;
            if (indexing) {
                if (!saved && !(saved = PyList_GetSlice(d->table, 0, PyList_GET_SIZE(d->table)))) goto error;
                if (table_add(d, entry) < 0) goto error;
            }
        }
        inflated += entry_size(entry);
        if (PyList_Append(headers, entry) < 0) goto error;
        Py_CLEAR(entry);
        if (inflated > d->max_header_list_size) goto decline;
    }
    if (d->maxsize > d->max_allowed_table_size) goto decline;
    Py_XDECREF(saved);
    PyBuffer_Release(&view);
    return headers;
maybe_error:
    if (PyErr_Occurred()) goto error;
decline:
    Py_CLEAR(entry);
    Py_CLEAR(name);
    Py_CLEAR(value);
    Py_CLEAR(headers);
    if (saved) {                                            /* the table as it was before the block */
        Py_SETREF(d->table, saved);
        d->size = saved_size;
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
error:
    Py_XDECREF(entry);
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(headers);
    if (saved) {
        Py_SETREF(d->table, saved);
        d->size = saved_size;
    }
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *Decoder_load(Decoder *d, PyObject *args) {
    PyObject *table;
    Py_ssize_t size, maxsize, allowed;
    if (!PyArg_ParseTuple(args, "O!nnn", &PyList_Type, &table, &size, &maxsize, &allowed)) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(table); i++) {
        PyObject *e = PyList_GET_ITEM(table, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(e, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(e, 1))) {
            PyErr_SetString(PyExc_TypeError, "table entries must be (bytes, bytes)");
            return NULL;
        }
    }
    Py_INCREF(table);
    Py_SETREF(d->table, table);
    d->size = size;
    d->maxsize = maxsize;
    d->max_allowed_table_size = allowed;
    Py_RETURN_NONE;
}

static int Decoder_init(Decoder *d, PyObject *args, PyObject *kw) {
    static char *names[] = {"max_header_list_size", NULL};
    Py_ssize_t max_list = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|n", names, &max_list)) return -1;
    if (!static_table) {
        PyErr_SetString(PyExc_RuntimeError, "hpack_accel.setup() was not called");
        return -1;
    }
    Py_XSETREF(d->table, PyList_New(0));
    if (!d->table) return -1;
    d->size = 0;
    d->maxsize = d->max_allowed_table_size = 4096;
    d->max_header_list_size = max_list;
    return 0;
}

static void Decoder_dealloc(Decoder *d) {
    Py_XDECREF(d->table);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_O, "A header block's [(name, value)], or None: let hpack decode it."},
    {"load", (PyCFunction)Decoder_load, METH_VARARGS, "load(table, size, maxsize, max_allowed_table_size)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Decoder_members[] = {
    {"table", T_OBJECT, offsetof(Decoder, table), READONLY, "the dynamic table, newest first"},
    {"size", T_PYSSIZET, offsetof(Decoder, size), READONLY, "its size as HPACK counts it"},
    {"maxsize", T_PYSSIZET, offsetof(Decoder, maxsize), READONLY, "its current limit"},
    {"max_allowed_table_size", T_PYSSIZET, offsetof(Decoder, max_allowed_table_size), 0,
     "the largest limit the peer's SETTINGS allow"},
    {"max_header_list_size", T_PYSSIZET, offsetof(Decoder, max_header_list_size), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "orchestrator.parsers.hpack_accel.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
    .tp_members = Decoder_members,
};

/* setup(static_table, codes, lengths): hpack's static table and Huffman code (257 symbols). */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *table, *codes, *lengths;
    if (!PyArg_ParseTuple(args, "O!OO", &PyTuple_Type, &table, &codes, &lengths)) return NULL;
    Py_ssize_t n = PySequence_Size(codes);
    if (n != 257 || PySequence_Size(lengths) != 257) {
        PyErr_SetString(PyExc_ValueError, "expected 257 Huffman codes");
        return NULL;
    }
    memset(tree, 0, sizeof tree);
    tree_nodes = 1;
    for (Py_ssize_t sym = 0; sym < n; sym++) {
        PyObject *c = PySequence_GetItem(codes, sym), *l = PySequence_GetItem(lengths, sym);
        unsigned long code = c ? PyLong_AsUnsignedLong(c) : 0;
        long bits = l ? PyLong_AsLong(l) : 0;
        Py_XDECREF(c);
        Py_XDECREF(l);
        if (PyErr_Occurred()) return NULL;
        if (bits < 1 || bits > 30) {
            PyErr_SetString(PyExc_ValueError, "bad Huffman code length");
            return NULL;
        }
        int node = 0;
        for (long i = bits - 1; i >= 0; i--) {
            int b = (code >> i) & 1;
            if (i == 0) {
                if (tree[node][b] != 0) goto bad;
                tree[node][b] = -(int)sym - 1;
            } else {
                if (tree[node][b] < 0) goto bad;
                if (tree[node][b] == 0) {
                    if (tree_nodes >= 512) goto bad;
                    tree[node][b] = tree_nodes++;
                }
                node = tree[node][b];
            }
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(table); i++) {
        PyObject *e = PyTuple_GET_ITEM(table, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(e, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(e, 1))) {
            PyErr_SetString(PyExc_TypeError, "static table entries must be (bytes, bytes)");
            return NULL;
        }
    }
    Py_INCREF(table);
    Py_XSETREF(static_table, table);
    static_len = PyTuple_GET_SIZE(table);
    Py_RETURN_NONE;
bad:
    PyErr_SetString(PyExc_ValueError, "not a prefix code");
    return NULL;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(static_table, huffman_codes, huffman_lengths)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hpack_accel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hpack_accel(void) {
    if (PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(&DecoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
