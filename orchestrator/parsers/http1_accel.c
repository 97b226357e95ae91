/* The common case of an HTTP/1.x header block, parsed and shaped into its record's JSON in C.
 *
 * head(buf, start, end, is_request) looks at the block buf[start:end] as Http1Parser._on_head
 * receives it (end = the end of its last line, before an optional CR). It takes only blocks
 * whose every byte is printable ASCII or a tab, with CRLF line endings, a plain start line
 * (HTTP/1.0 or HTTP/1.1), header lines that Http1Parser accepts, at most one Content-Length
 * (digits only) and at most one Transfer-Encoding (exactly "chunked"). For anything else it
 * returns None, and the Python code parses the block as before: errors and odd cases have one
 * implementation only.
 *
 * For a block it takes it returns
 *   request:  (method, target, version, fragment, content_length, chunked)
 *   response: (status, reason, version, fragment, content_length, chunked)
 * where fragment is the record's `"method":...,"path":...,"version":...,"headers":{...}` (or
 * `"status":...,"reason":...`) exactly as msgspec encodes the fields that http1.Request.fields /
 * Response.fields and http_shape.header_fields make (tests/parsers/test_http1_accel.py checks this
 * against them), content_length is -1 when absent and chunked is 1 when Transfer-Encoding is
 * chunked, else 0.
 */
#define _GNU_SOURCE       /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_FIELDS 100

typedef struct {
    const unsigned char *name, *value;
    Py_ssize_t name_len, value_len;
    int group;        /* index of the first field with the same name (case-insensitive) */
} field_t;

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} out_t;

static int out_grow(out_t *o, Py_ssize_t more) {
    if (o->len + more <= o->cap) return 0;
    Py_ssize_t cap = o->cap * 2 > o->len + more ? o->cap * 2 : o->len + more + 256;
    char *d = PyMem_Realloc(o->data, cap);
    if (!d) { PyErr_NoMemory(); return -1; }
    o->data = d;
    o->cap = cap;
    return 0;
}

static int out_raw(out_t *o, const char *s, Py_ssize_t n) {
    if (out_grow(o, n) < 0) return -1;
    memcpy(o->data + o->len, s, n);
    o->len += n;
    return 0;
}

#define OUT_LIT(o, s) out_raw((o), (s), (Py_ssize_t)(sizeof(s) - 1))

/* A JSON string as msgspec writes it; the input is printable ASCII or tab only. (A byte loop:
 * header names and values are short, and memcpy of the runs between escapes measured slower.) */
static int out_str(out_t *o, const unsigned char *s, Py_ssize_t n) {
    if (out_grow(o, 2 * n + 2) < 0) return -1;
    char *d = o->data + o->len;
    *d++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') { *d++ = '\\'; *d++ = (char)c; }
        else if (c == '\t') { *d++ = '\\'; *d++ = 't'; }
        else *d++ = (char)c;
    }
    *d++ = '"';
    o->len = d - o->data;
    return 0;
}

/* A str of printable ASCII (checked by the caller): no decoding, and the usual start-line words
 * shared instead of made anew for every message. */
static PyObject *common_words[8];
static const char *const common_texts[8] = {"GET", "POST", "PUT", "HEAD", "HTTP/1.1", "HTTP/1.0", "OK", "DELETE"};
static const Py_ssize_t common_lens[8] = {3, 4, 3, 4, 8, 8, 2, 6};

static PyObject *ascii_str(const unsigned char *s, Py_ssize_t n) {
    for (int i = 0; i < 8; i++) {
        if (common_lens[i] == n && memcmp(common_texts[i], s, n) == 0 && common_words[i]) {
            Py_INCREF(common_words[i]);
            return common_words[i];
        }
    }
    PyObject *u = PyUnicode_New(n, 127);
    if (u) memcpy(PyUnicode_1BYTE_DATA(u), s, n);
    return u;
}

/* Items i.. of tuple t from what the parse found; on failure t is released and NULL returned. */
static PyObject *fill_head(PyObject *t, Py_ssize_t i, PyObject *first, PyObject *second, PyObject *version,
                           const char *json, Py_ssize_t json_len, Py_ssize_t content_length, int chunked) {
    PyObject *items[6] = {first, second, version, PyBytes_FromStringAndSize(json, json_len),
                          PyLong_FromSsize_t(content_length), PyLong_FromLong(chunked)};
    int ok = t != NULL;
    for (int k = 0; k < 6; k++) {
        if (!items[k]) ok = 0;
        if (t && items[k]) PyTuple_SET_ITEM(t, i + k, items[k]);
        else Py_XDECREF(items[k]);
    }
    if (!ok) { Py_XDECREF(t); return NULL; }
    return t;
}

static int is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int same_name(const field_t *a, const field_t *b) {
    if (a->name_len != b->name_len) return 0;
    for (Py_ssize_t i = 0; i < a->name_len; i++) {
        unsigned char x = a->name[i], y = b->name[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return 0;
    }
    return 1;
}

/* s[:n] equals `lower` ignoring ASCII case */
static int ieq(const unsigned char *s, Py_ssize_t n, const char *lower) {
    if (n != (Py_ssize_t)strlen(lower)) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char x = s[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (x != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

static int name_is(const field_t *f, const char *lower) { return ieq(f->name, f->name_len, lower); }

static int is_version(const unsigned char *s, Py_ssize_t n) {
    return n == 8 && memcmp(s, "HTTP/1.", 7) == 0 && (s[7] == '0' || s[7] == '1');
}

/* headers object of the record: http_shape.header_fields's grouping, in first-seen order. */
static int out_headers(out_t *o, field_t *f, int n) {
    if (OUT_LIT(o, "\"headers\":{") < 0) return -1;
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (f[i].group != i) continue;
        int count = 0;
        for (int j = i; j < n; j++) count += f[j].group == i;
        if (!first && OUT_LIT(o, ",") < 0) return -1;
        first = 0;
        if (out_str(o, f[i].name, f[i].name_len) < 0 || OUT_LIT(o, ":") < 0) return -1;
        if (count == 1) {
            if (out_str(o, f[i].value, f[i].value_len) < 0) return -1;
        } else if (name_is(&f[i], "cookie")) {
            /* one string, the values joined with "; " */
            if (OUT_LIT(o, "\"") < 0) return -1;
            int k = 0;
            for (int j = i; j < n; j++) {
                if (f[j].group != i) continue;
                if (k++ && OUT_LIT(o, "; ") < 0) return -1;
                Py_ssize_t at = o->len;
                if (out_str(o, f[j].value, f[j].value_len) < 0) return -1;
                /* drop the quotes out_str put around the piece */
                memmove(o->data + at, o->data + at + 1, o->len - at - 2);
                o->len -= 2;
            }
            if (OUT_LIT(o, "\"") < 0) return -1;
        } else {
            if (OUT_LIT(o, "[") < 0) return -1;
            int k = 0;
            for (int j = i; j < n; j++) {
                if (f[j].group != i) continue;
                if (k++ && OUT_LIT(o, ",") < 0) return -1;
                if (out_str(o, f[j].value, f[j].value_len) < 0) return -1;
            }
            if (OUT_LIT(o, "]") < 0) return -1;
        }
    }
    return OUT_LIT(o, "}");
}

/* A decimal number, as "%zd" would write it (without the cost of printf). */
static int out_int(out_t *o, Py_ssize_t v) {
    char digits[24];
    int n = 0;
    int negative = v < 0;
    size_t u = negative ? (size_t)0 - (size_t)v : (size_t)v;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (out_grow(o, n + 1) < 0) return -1;
    if (negative) o->data[o->len++] = '-';
    while (n) o->data[o->len++] = digits[--n];
    return 0;
}

/* head()'s tuple, at index `extra` of a tuple `extra` items longer (the caller fills those). */
static PyObject *parse_head(const unsigned char *buf, Py_ssize_t buf_len, Py_ssize_t start, Py_ssize_t end,
                            int is_request, Py_ssize_t extra);

static PyObject *head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "head(buf, start, end, is_request)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    int is_request = PyObject_IsTrue(args[3]);
    if ((start == -1 || end == -1 || is_request < 0) && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = parse_head(view.buf, view.len, start, end, is_request, 0);
    PyBuffer_Release(&view);
    return result;
}

#define MAX_HEADER_BYTES 65536   /* http1.MAX_HEADER_BYTES */
#define MAX_METHOD 32            /* http1._MAX_METHOD */

/* block(buf, pos, n, is_request): at a message start (buf[pos] neither CR nor LF), the whole
 * header block if buf[pos:n] holds it and head() takes it: (line_end, next_pos, *head's tuple),
 * where line_end and next_pos are what Http1Parser._find_block would give. Else None. */
static PyObject *block(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "block(buf, pos, n, is_request)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]), n = PyLong_AsSsize_t(args[2]);
    int is_request = PyObject_IsTrue(args[3]);
    if ((pos == -1 || n == -1 || is_request < 0) && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *buf = view.buf;
    PyObject *result = NULL;
    if (pos < 0 || n > view.len || pos >= n) goto none;
    if (is_request) {
        /* Http1Parser._begin: a method of at most MAX_METHOD bytes before a space */
        const unsigned char *sp = memchr(buf + pos, ' ', (size_t)(n - pos < MAX_METHOD + 1 ? n - pos : MAX_METHOD + 1));
        if (!sp || sp == buf + pos) goto none;
    } else if (n - pos < 7 || memcmp(buf + pos, "HTTP/1.", 7) != 0) {
        goto none;
    }
    Py_ssize_t limit = pos + MAX_HEADER_BYTES < n ? pos + MAX_HEADER_BYTES : n;
    const unsigned char *p = buf + pos, *stop = buf + limit, *end = NULL;
    while (p + 3 <= stop) {
        const unsigned char *lf = memchr(p, '\n', stop - p);
        if (!lf || lf + 3 > stop) break;
        if (lf[1] == '\r' && lf[2] == '\n') { end = lf; break; }
        if (lf[1] == '\n') break;     /* a bare LF block end: Python's */
        p = lf + 1;
    }
    if (!end) goto none;
    result = parse_head(buf, view.len, pos, end - buf, is_request, 2);
    if (result && result != Py_None) {
        PyTuple_SET_ITEM(result, 0, PyLong_FromSsize_t(end - buf));
        PyTuple_SET_ITEM(result, 1, PyLong_FromSsize_t(end - buf + 3));
        if (!PyTuple_GET_ITEM(result, 0) || !PyTuple_GET_ITEM(result, 1)) Py_CLEAR(result);
    }
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyObject *parse_head(const unsigned char *buf, Py_ssize_t buf_len, Py_ssize_t start, Py_ssize_t end,
                            int is_request, Py_ssize_t extra) {
    PyObject *result = NULL;
    out_t o = {NULL, 0, 0};
    if (start < 0 || end > buf_len || start >= end) goto none;
    if (buf[end - 1] == '\r') end--;
    const unsigned char *p = buf + start, *stop = buf + end;

    /* every byte printable ASCII or tab, or the CR LF between lines */
    for (const unsigned char *q = p; q < stop; q++) {
        unsigned char c = *q;
        if (c >= 0x20 && c < 0x7f) continue;
        if (c == '\t') continue;
        if (c == '\r' && q + 1 < stop && q[1] == '\n') { q++; continue; }
        goto none;
    }
    /* the lines */
    const unsigned char *line = p;
    const unsigned char *eol = memchr(line, '\r', stop - line);
    if (!eol) eol = stop;
    const unsigned char *sl = line;
    Py_ssize_t sl_len = eol - line;

    field_t fields[MAX_FIELDS];
    int n = 0;
    Py_ssize_t content_length = -1;
    int chunked = 0, te_seen = 0;
    line = eol < stop ? eol + 2 : stop;
    while (line < stop) {
        eol = memchr(line, '\r', stop - line);
        if (!eol) eol = stop;
        const unsigned char *colon = memchr(line, ':', eol - line);
        if (!colon || colon == line || n == MAX_FIELDS) goto none;
        for (const unsigned char *q = line; q < colon; q++)
            if (*q == ' ' || *q == '\t') goto none;
        const unsigned char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        field_t *f = &fields[n];
        f->name = line;
        f->name_len = colon - line;
        f->value = v;
        f->value_len = ve - v;
        f->group = n;
        for (int j = 0; j < n; j++)
            if (fields[j].group == j && same_name(&fields[j], f)) { f->group = j; break; }
        if (name_is(f, "content-length")) {
            if (content_length >= 0 || f->value_len == 0 || f->value_len > 18) goto none;
            Py_ssize_t x = 0;
            for (Py_ssize_t i = 0; i < f->value_len; i++) {
                if (f->value[i] < '0' || f->value[i] > '9') goto none;
                x = x * 10 + (f->value[i] - '0');
            }
            content_length = x;
        } else if (name_is(f, "transfer-encoding")) {
            if (te_seen || !ieq(f->value, f->value_len, "chunked")) goto none;
            te_seen = chunked = 1;
        }
        n++;
        line = eol < stop ? eol + 2 : stop;
    }

    if (out_grow(&o, 256) < 0) goto done;
    if (is_request) {
        const unsigned char *sp1 = memchr(sl, ' ', sl_len);
        if (!sp1 || sp1 == sl) goto none;
        const unsigned char *sp2 = memchr(sp1 + 1, ' ', sl + sl_len - sp1 - 1);
        if (!sp2 || sp2 == sp1 + 1) goto none;
        if (memchr(sp2 + 1, ' ', sl + sl_len - sp2 - 1)) goto none;
        for (const unsigned char *q = sl; q < sp1; q++)
            if (!is_tchar(*q)) goto none;
        const unsigned char *ver = sp2 + 1;
        Py_ssize_t ver_len = sl + sl_len - ver;
        if (!is_version(ver, ver_len)) goto none;
        if (OUT_LIT(&o, "\"method\":") < 0 || out_str(&o, sl, sp1 - sl) < 0 ||
            OUT_LIT(&o, ",\"path\":") < 0 || out_str(&o, sp1 + 1, sp2 - sp1 - 1) < 0 ||
            OUT_LIT(&o, ",\"version\":") < 0 || out_str(&o, ver, ver_len) < 0 ||
            OUT_LIT(&o, ",") < 0 || out_headers(&o, fields, n) < 0)
            goto done;
        result = fill_head(PyTuple_New(extra + 6), extra, ascii_str(sl, sp1 - sl), ascii_str(sp1 + 1, sp2 - sp1 - 1),
                           ascii_str(ver, ver_len), o.data, o.len, content_length, chunked);
    } else {
        if (sl_len < 12 || !is_version(sl, 8) || sl[8] != ' ') goto none;
        const unsigned char *code = sl + 9;
        for (int i = 0; i < 3; i++)
            if (code[i] < '0' || code[i] > '9') goto none;
        if (sl_len > 12 && sl[12] != ' ') goto none;
        int status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
        if (status < 100) goto none;
        const unsigned char *reason = sl_len > 12 ? sl + 13 : sl + sl_len;
        Py_ssize_t reason_len = sl + sl_len - reason;
        if (OUT_LIT(&o, "\"status\":") < 0 || out_int(&o, status) < 0 ||
            OUT_LIT(&o, ",\"reason\":") < 0 || out_str(&o, reason, reason_len) < 0 ||
            OUT_LIT(&o, ",\"version\":") < 0 || out_str(&o, sl, 8) < 0 ||
            OUT_LIT(&o, ",") < 0 || out_headers(&o, fields, n) < 0)
            goto done;
        result = fill_head(PyTuple_New(extra + 6), extra, PyLong_FromLong(status), ascii_str(reason, reason_len),
                           ascii_str(sl, 8), o.data, o.len, content_length, chunked);
    }
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(o.data);
    return result;
}

/* Length of the valid UTF-8 sequence at s[0..n), as Python's strict decoder accepts it; 0: invalid. */
static int utf8_seq(const unsigned char *s, Py_ssize_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[2] & 0xc0) != 0x80) return 0;
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return s[1] >= lo && s[1] <= hi ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80) return 0;
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return s[1] >= lo && s[1] <= hi ? 4 : 0;
    }
    return 0;
}

/* body_tail(body, body_len, truncated): `,"body":<text>,"body_len":N[,"truncated":true]` as msgspec
 * encodes http_shape.body_fields for a UTF-8 body; None when the body is not UTF-8 (base64 then). */
static PyObject *body_tail(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t body_len;
    int truncated;
    if (!PyArg_ParseTuple(args, "y*np", &view, &body_len, &truncated)) return NULL;
    const unsigned char *s = view.buf;
    Py_ssize_t n = view.len;
    out_t o = {NULL, 0, 0};
    PyObject *result = NULL;
    if (out_grow(&o, n + n / 8 + 64) < 0) goto done;
    if (OUT_LIT(&o, ",\"body\":\"") < 0) goto done;
    for (Py_ssize_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            Py_ssize_t j = i + 1;
            while (j < n && s[j] >= 0x20 && s[j] < 0x80 && s[j] != '"' && s[j] != '\\') j++;
            if (out_raw(&o, (const char *)s + i, j - i) < 0) goto done;
            i = j;
            continue;
        }
        if (c >= 0x80) {
            int k = utf8_seq(s + i, n - i);
            if (!k) { result = Py_None; Py_INCREF(result); goto done; }
            if (out_raw(&o, (const char *)s + i, k) < 0) goto done;
            i += k;
            continue;
        }
        char esc[8];
        int len = 2;
        esc[0] = '\\';
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\b': esc[1] = 'b'; break;
            case '\t': esc[1] = 't'; break;
            case '\n': esc[1] = 'n'; break;
            case '\f': esc[1] = 'f'; break;
            case '\r': esc[1] = 'r'; break;
            default: len = snprintf(esc, sizeof esc, "\\u%04x", c);
        }
        if (out_raw(&o, esc, len) < 0) goto done;
        i++;
    }
    if (OUT_LIT(&o, "\",\"body_len\":") < 0 || out_int(&o, body_len) < 0) goto done;
    if (truncated && OUT_LIT(&o, ",\"truncated\":true") < 0) goto done;
    result = PyBytes_FromStringAndSize(o.data, o.len);
done:
    PyMem_Free(o.data);
    PyBuffer_Release(&view);
    return result;
}

/* find_any_lower(data, needles) -> bool: whether any of `needles` (bytes, lower-case ASCII) is in
 * data.lower(), as `any(n in data.lower() for n in needles)` says (redaction's first look at a
 * record: events.redaction_candidates). Lower-cases into a buffer of its own, then memmem. */
static PyObject *find_any_lower(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "find_any_lower(bytes, tuple of bytes)");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(args[1]);
    for (Py_ssize_t k = 0; k < count; k++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(args[1], k))) {
            PyErr_SetString(PyExc_TypeError, "find_any_lower: needles must be bytes");
            return NULL;
        }
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    unsigned char small[4096];
    unsigned char *low = len <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc(len ? len : 1);
    if (!low)
        return PyErr_NoMemory();
    /* ASCII lower-casing eight bytes at a time: a byte gets 0x20 added when it is in 'A'..'Z' */
    Py_ssize_t i = 0;
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        uint64_t seven = w & ~highs;
        uint64_t from_a = seven + (0x80 - 'A') * ones;          /* high bit: byte >= 'A' */
        uint64_t past_z = seven + (0x80 - 'Z' - 1) * ones;      /* high bit: byte > 'Z' */
        uint64_t upper = (from_a ^ past_z) & ~w & highs;
        w |= upper >> 2;
        memcpy(low + i, &w, 8);
    }
    for (; i < len; i++) {
        unsigned char c = data[i];
        low[i] = (unsigned char)(c - 'A') < 26 ? c + 32 : c;
    }
    int found = 0;
    for (Py_ssize_t k = 0; k < count && !found; k++) {
        PyObject *needle = PyTuple_GET_ITEM(args[1], k);
        Py_ssize_t nlen = PyBytes_GET_SIZE(needle);
        found = nlen == 0 || (nlen <= len && memmem(low, len, PyBytes_AS_STRING(needle), nlen) != NULL);
    }
    if (low != small)
        PyMem_Free(low);
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"head", (PyCFunction)(void (*)(void))head, METH_FASTCALL, "The common case of an HTTP/1.x header block (see the module's source)."},
    {"block", (PyCFunction)(void (*)(void))block, METH_FASTCALL,
     "A whole well-formed header block at a message start, found and parsed (see the source)."},
    {"body_tail", body_tail, METH_VARARGS, "A UTF-8 body's record fields as JSON text, or None."},
    {"find_any_lower", (PyCFunction)(void (*)(void))find_any_lower, METH_FASTCALL,
     "Whether any of the (lower-case ASCII) needles is in data.lower()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "http1_accel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_http1_accel(void) {
    for (int i = 0; i < 8; i++) {
        if (!common_words[i]) common_words[i] = PyUnicode_InternFromString(common_texts[i]);
        if (!common_words[i]) return NULL;
    }
    return PyModule_Create(&module);
}
