/* The tracer's trace function, in C: it runs on every event of the traced program.
 *
 * recorder.py sets a run up and reads its result; values.py decides how a value is written and
 * whether it changed. A `Tracer` is installed with PyEval_SetTrace (sys.gettrace() returns it).
 * It keeps the stack of open scopes (the traced frames, each with what it remembers of its
 * locals) and:
 *   - drops every event that is not the program's: calls of code from another file, and line,
 *     return and exception events of frames other than the innermost traced one (a pointer test);
 *   - records call, line, return and exception frames with the semantics of sys.settrace: a
 *     local that is the same object as before (and, for a list or dict snapshot, holds the same
 *     items) keeps its text and is written ".."; a number or a short string is rendered here;
 *     any other value goes to values.ValueRenderer.track (or .text for a return value), in Python;
 *   - counts the bytes of every frame's text as it goes, without writing it (the size limit).
 * The contract with Python is by name, never by position: the module exports what both sides
 * must agree on (EVENTS, SAME/CHANGED/REWRITTEN, FRAME_FIELDS, the Tracked type; see
 * tests/test_trace_contract.py); what a scope remembers of a local is a `Tracked` (a type
 * with named fields, not a tuple), made here or by values.py.
 * Past a limit, recorder.py's check_limits sets the status and raises the recorder's stop signal.
 * Any other exception raised here (a bug, or the recursion limit) is kept in `failure`,
 * recording ends (`done`), and the stop signal is raised in the program instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>
#include <time.h>

/* How a local changed since the scope's previous frame (exported; values.py imports them). */
enum { SAME, CHANGED, REWRITTEN };
/* Event kinds, in the order of EVENT_SPELLINGS (exported as EVENTS; equal to cwm.trace.tokens.EVENTS). */
enum { CALL_, LINE_, RETURN_, EXCEPTION_, NEVENTS };
static const char *EVENT_SPELLINGS[NEVENTS] = {"call", "line", "return", "exception"};

/* What a scope remembers of a local: a Tracked (exported), made here for numbers and short
 * strings and by values.ValueRenderer.track for the rest. Both sides use its fields by name. */
typedef struct {
    PyObject_HEAD
    PyObject *value;       /* the object itself when identity vouches for its text, else values.UNKEPT */
    PyObject *items;       /* the shallow copy of a list or dict while `value` holds its very items, else None */
    PyObject *text;        /* the value's text (its bounded repr) */
    PyObject *fingerprint; /* None when the text is not truncated, else a digest of the whole value (values.py) */
    Py_ssize_t nbytes;     /* the length of the text as a JSON string: the bytes it takes in a trace */
    int how;               /* SAME, CHANGED or REWRITTEN: against what the scope remembered before */
} Tracked;

static PyTypeObject TrackedType;
static const char *TRACKED_FIELDS[] = {"value", "items", "text", "nbytes", "fingerprint", "how", NULL};
enum { NTRACKED = 6 };

static PyObject *
new_tracked(PyObject *value, PyObject *items, PyObject *text, Py_ssize_t nbytes, PyObject *fingerprint, int how)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "Tracked.text must be a str, not %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (how < SAME || how > REWRITTEN || nbytes < 0) {
        PyErr_Format(PyExc_ValueError, "Tracked: how must be SAME, CHANGED or REWRITTEN (got %d) and nbytes >= 0", how);
        return NULL;
    }
    Tracked *t = PyObject_GC_New(Tracked, &TrackedType);
    if (t == NULL)
        return NULL;
    t->value = Py_NewRef(value);
    t->items = Py_NewRef(items);
    t->text = Py_NewRef(text);
    t->fingerprint = Py_NewRef(fingerprint);
    t->nbytes = nbytes;
    t->how = how;
    PyObject_GC_Track(t);
    return (PyObject *)t;
}

/* Tracked(value, items, text, nbytes, fingerprint, how), by position or keyword (vectorcall). */
static PyObject *
Tracked_vectorcall(PyObject *Py_UNUSED(type), PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *field[NTRACKED] = {NULL};
    if (nargs > NTRACKED) {
        PyErr_Format(PyExc_TypeError, "Tracked takes %d arguments (%zd given)", NTRACKED, nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        field[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < NTRACKED && PyUnicode_CompareWithASCIIString(name, TRACKED_FIELDS[i]) != 0)
            i++;
        if (i == NTRACKED || field[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "Tracked got %s argument %R", i == NTRACKED ? "an unexpected" : "a repeated",
                         name);
            return NULL;
        }
        field[i] = args[nargs + k];
    }
    for (int i = 0; i < NTRACKED; i++)
        if (field[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "Tracked is missing its argument %s", TRACKED_FIELDS[i]);
            return NULL;
        }
    Py_ssize_t nbytes = PyLong_AsSsize_t(field[3]);
    long how = PyLong_AsLong(field[5]);
    if ((nbytes == -1 || how == -1) && PyErr_Occurred())
        return NULL;
    return new_tracked(field[0], field[1], field[2], nbytes, field[4], (int)how);
}

static int
Tracked_traverse(Tracked *t, visitproc visit, void *arg)
{
    Py_VISIT(t->value);
    Py_VISIT(t->items);
    Py_VISIT(t->text);
    Py_VISIT(t->fingerprint);
    return 0;
}

static int
Tracked_clear(Tracked *t)
{
    Py_CLEAR(t->value);
    Py_CLEAR(t->items);
    Py_CLEAR(t->text);
    Py_CLEAR(t->fingerprint);
    return 0;
}

static void
Tracked_dealloc(Tracked *t)
{
    PyObject_GC_UnTrack(t);
    Tracked_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *
Tracked_repr(Tracked *t)
{
    return PyUnicode_FromFormat("Tracked(value=%R, items=%R, text=%R, nbytes=%zd, fingerprint=%R, how=%d)", t->value,
                                t->items, t->text, t->nbytes, t->fingerprint, t->how);
}

static PyMemberDef Tracked_members[] = {
    {"value", T_OBJECT_EX, offsetof(Tracked, value), READONLY, "the object itself when identity vouches for its text, else values.UNKEPT"},
    {"items", T_OBJECT_EX, offsetof(Tracked, items), READONLY, "the shallow copy of a list or dict while `value` holds its very items, else None"},
    {"text", T_OBJECT_EX, offsetof(Tracked, text), READONLY, "the value's text (its bounded repr)"},
    {"nbytes", T_PYSSIZET, offsetof(Tracked, nbytes), READONLY, "the length of the text as a JSON string: the bytes it takes in a trace"},
    {"fingerprint", T_OBJECT_EX, offsetof(Tracked, fingerprint), READONLY, "None when the text is not truncated, else a digest of the whole value"},
    {"how", T_INT, offsetof(Tracked, how), READONLY, "SAME, CHANGED or REWRITTEN: how the value compares with what the scope remembered before"},
    {NULL},
};

static PyTypeObject TrackedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cwm.trace._ctrace.Tracked",
    .tp_doc = PyDoc_STR("Tracked(value, items, text, nbytes, fingerprint, how): what a scope remembers of a local."),
    .tp_basicsize = sizeof(Tracked),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_vectorcall = Tracked_vectorcall,
    .tp_dealloc = (destructor)Tracked_dealloc,
    .tp_traverse = (traverseproc)Tracked_traverse,
    .tp_clear = (inquiry)Tracked_clear,
    .tp_repr = (reprfunc)Tracked_repr,
    .tp_members = Tracked_members,
};
#define AS_TRACKED(t) ((Tracked *)(t))

/* The fields of format.Frame, set by name (exported as FRAME_FIELDS). */
enum { NFRAME_FIELDS = 7 };
static const char *FRAME_FIELDS[NFRAME_FIELDS] = {"event", "lineno", "source", "locals", "value", "depth", "rewritten"};

typedef struct {
    PyObject *frame;   /* the traced frame object */
    PyObject *seen_of; /* dict: local name -> what the scope remembers of it (a Tracked) */
    Py_ssize_t unchanged_nbytes; /* bytes of its locals when all are written "..", less 2 for "{}" */
    int is_module;     /* a whole script's module scope: definitions and dunders are not state */
} Scope;

typedef struct {
    PyObject_HEAD
    /* given at construction */
    PyObject *frames;       /* list of format.Frame: the trace */
    PyObject *source_of;    /* list: source line by line number */
    Py_ssize_t *fixed[NEVENTS]; /* bytes of a frame's text besides its locals or value, by line number */
    Py_ssize_t nlines;
    PyObject *frame_type;   /* format.Frame */
    Py_ssize_t frame_slots[NFRAME_FIELDS]; /* offsets of its fields' slots, in FRAME_FIELDS order */
    PyObject *track, *text; /* values.ValueRenderer's */
    PyObject *definitions;  /* types that are program structure, not state (module scopes) */
    PyObject *is_entry;     /* frame -> bool: does this call start the trace? */
    PyObject *def_line;     /* code -> the line number a call of it shows (its def line) */
    PyObject *check_limits; /* size -> None, or sets the status and raises `stop` */
    PyObject *filename;     /* the program's code objects have this co_filename */
    PyObject *stop;         /* the recorder's stop signal (an exception type) */
    PyObject *def_lines;    /* dict: id(code) -> (code, def_line(code)); by id: hashing a code object is slow */
    Py_ssize_t limit, max_events, max_bytes, unchanged_len;
    double timeout;         /* seconds from the entry's call; 0: none */
    char whole_module;
    /* state, read (and some written) by recorder.py */
    double deadline;        /* time.monotonic() past which the trace stops; 0: none */
    Py_ssize_t nbytes;      /* of the trace text so far */
    char started, completed, done;
    char displaced;         /* a settrace not ours ran on this thread while installed (see settrace_audit) */
    char after_return;      /* the last frame was a return: the next line frame is written in full */
    PyObject *failure;      /* the exception that ended recording, or NULL */
    Scope *scopes;
    Py_ssize_t nscopes, capacity;
} Tracer;

static PyObject *EVENT_NAMES[NEVENTS], *MODULE_NAME, *EMPTY_TUPLE;

/* Every PyEval_SetTrace, sys.settrace included, raises the audit event "sys.settrace", which no
 * program can unhook. While a Tracer is installed (`watched`), any such call on its thread that is
 * not our own marks it displaced: a program that removed the trace function through the C API
 * (ctypes) and put it back has lost events, and its trace must not pass for whole. */
static Tracer *watched;
static PyThreadState *watched_tstate;
static int own_settrace;

static int
settrace_audit(const char *event, PyObject *Py_UNUSED(args), void *Py_UNUSED(data))
{
    if (watched != NULL && !watched->done && !own_settrace && PyThreadState_Get() == watched_tstate
        && strcmp(event, "sys.settrace") == 0)
        watched->displaced = 1;
    return 0;
}

static void
set_trace_ours(Py_tracefunc func, PyObject *obj)
{
    own_settrace = 1;
    PyEval_SetTrace(func, obj);
    own_settrace = 0;
}
static PyObject *json_str; /* json's encode_basestring_ascii: a str as a JSON string, in C */

/* -- helpers --------------------------------------------------------------------------------- */

/* A number whose repr is short ASCII made in C: float, bool, None, or an int that fits 64 bits. */
static int
is_quick(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyFloat_Type || t == &PyBool_Type || v == Py_None)
        return 1;
    if (t == &PyLong_Type) {
        int overflow;
        (void)PyLong_AsLongLongAndOverflow(v, &overflow);
        return overflow == 0;
    }
    return 0;
}

/* Are the first len(items) items (keys and values) of this list or dict the very objects of
 * `items`, its earlier snapshot (a list or a dict), in the same order? An identity test: it runs
 * no user code (never ==, as 1 == 1.0 == True). */
static int
starts_with(PyObject *value, PyObject *items)
{
    if (PyList_CheckExact(items)) {
        Py_ssize_t n = PyList_GET_SIZE(items);
        if (!PyList_CheckExact(value) || PyList_GET_SIZE(value) < n)
            return 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (PyList_GET_ITEM(value, i) != PyList_GET_ITEM(items, i))
                return 0;
        return 1;
    }
    if (!PyDict_CheckExact(items) || !PyDict_CheckExact(value) || PyDict_GET_SIZE(value) < PyDict_GET_SIZE(items))
        return 0;
    Py_ssize_t i = 0, j = 0;
    PyObject *k1, *v1, *k2, *v2;
    while (PyDict_Next(items, &i, &k1, &v1)) {
        if (!PyDict_Next(value, &j, &k2, &v2) || k1 != k2 || v1 != v2)
            return 0;
    }
    return 1;
}

static Py_ssize_t
size_of(PyObject *o) /* of a list or dict; -1 for anything else */
{
    return PyList_CheckExact(o) ? PyList_GET_SIZE(o) : PyDict_CheckExact(o) ? PyDict_GET_SIZE(o) : -1;
}

/* Does this list or dict hold the very objects of its snapshot `items`, in the same order? */
static int
same_items(PyObject *value, PyObject *items)
{
    Py_ssize_t n = size_of(items);
    return n >= 0 && size_of(value) == n && starts_with(value, items);
}

static PyObject *
py_starts_with(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "starts_with(value, items) takes 2 arguments");
        return NULL;
    }
    return PyBool_FromLong(starts_with(args[0], args[1]));
}

/* len(json_str(name)) + 4 + len('".."'): what a local adds to a frame written all "..". */
static Py_ssize_t
unchanged_bytes_of(Tracer *self, PyObject *name)
{
    PyObject *quoted = PyObject_CallOneArg(json_str, name);
    if (quoted == NULL)
        return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(quoted) + 4 + self->unchanged_len;
    Py_DECREF(quoted);
    return n;
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic() reads on Linux */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Before recording an event of `size` bytes: past a limit, recorder.py's check_limits stops the
 * run (it sets the status and raises the stop signal). */
static int
check_limits(Tracer *self, Py_ssize_t size)
{
    if (PyList_GET_SIZE(self->frames) >= self->max_events || self->nbytes + size > self->max_bytes
        || (self->deadline > 0 && monotonic() > self->deadline)) {
        PyObject *r = PyObject_CallFunction(self->check_limits, "n", size);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* Append a frame of the trace and count its bytes. format.Frame is a dataclass with __slots__
 * whose __init__ (Python code, slow on this path) only stores its arguments: they are stored
 * here into the same slots. */
static int
record(Tracer *self, int event, int lineno, PyObject *locals, PyObject *value, PyObject *rewritten,
       Py_ssize_t size)
{
    PyObject *number = PyLong_FromLong(lineno), *depth = PyLong_FromSsize_t(self->nscopes - 1);
    PyTypeObject *type = (PyTypeObject *)self->frame_type;
    PyObject *frame = number && depth ? type->tp_alloc(type, 0) : NULL;
    if (frame != NULL) {
        PyObject *fields[NFRAME_FIELDS] = {EVENT_NAMES[event], number, PyList_GET_ITEM(self->source_of, lineno),
                                           locals, value, depth, rewritten};
        for (int i = 0; i < NFRAME_FIELDS; i++)
            *(PyObject **)((char *)frame + self->frame_slots[i]) = Py_NewRef(fields[i]);
    }
    Py_XDECREF(number);
    Py_XDECREF(depth);
    int status = frame != NULL ? PyList_Append(self->frames, frame) : -1;
    Py_XDECREF(frame);
    if (status == 0)
        self->nbytes += size;
    return status;
}

/* The fast path of tracking a value, here only (values.ValueRenderer.track does the rest): a
 * number or a string of at most `limit` characters whose repr is at most `limit` characters.
 * Returns a new reference to its Tracked (how: against `seen`, what the scope remembered before,
 * or NULL), or NULL: not this case (no exception set), or an exception. */
static PyObject *
track_first_case(PyObject *value, Py_ssize_t limit, PyObject *seen)
{
    int is_str = PyUnicode_CheckExact(value);
    if (!(is_str ? PyUnicode_GET_LENGTH(value) <= limit : is_quick(value)))
        return NULL;
    PyObject *text = PyObject_Repr(value);
    if (text == NULL)
        return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), nbytes = n + 2; /* as a JSON string */
    if (n > limit) {
        Py_DECREF(text);
        return NULL;
    }
    if (is_str) {
        if (!PyUnicode_IS_ASCII(text)) {
            PyObject *quoted = PyObject_CallOneArg(json_str, text);
            if (quoted == NULL) {
                Py_DECREF(text);
                return NULL;
            }
            nbytes = PyUnicode_GET_LENGTH(quoted);
            Py_DECREF(quoted);
        }
        else { /* a repr has no control characters: JSON escapes only " and \ */
            const Py_UCS1 *c = PyUnicode_1BYTE_DATA(text);
            for (Py_ssize_t i = 0; i < n; i++)
                nbytes += c[i] == '"' || c[i] == '\\';
        }
    }
    int same = seen != NULL && PyUnicode_Compare(text, AS_TRACKED(seen)->text) == 0;
    PyObject *tracked = new_tracked(value, Py_None, text, nbytes, Py_None, same ? SAME : CHANGED);
    Py_DECREF(text);
    return tracked;
}

/* What a scope remembers of a value: a new reference to its Tracked, with *how its `how`. */
static PyObject *
track(Tracer *self, PyObject *value, PyObject *seen, int *how)
{
    PyObject *tracked = track_first_case(value, self->limit, seen);
    if (tracked == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_XINCREF(seen); /* track may run user code, which may change what holds seen */
        tracked = PyObject_CallFunctionObjArgs(self->track, value, seen ? seen : Py_None, NULL);
        Py_XDECREF(seen);
        if (tracked == NULL)
            return NULL;
        if (!Py_IS_TYPE(tracked, &TrackedType)) {
            PyErr_Format(PyExc_TypeError, "track must return a _ctrace.Tracked, not %.100s", Py_TYPE(tracked)->tp_name);
            Py_DECREF(tracked);
            return NULL;
        }
    }
    *how = AS_TRACKED(tracked)->how; /* SAME, CHANGED or REWRITTEN: new_tracked checks */
    return tracked;
}

/* Not a local to show: a comprehension's iterator argument (.0), or, in a module namespace, a
 * key that is not a name (globals()[1] = ...). */
static int
is_hidden(PyObject *name)
{
    return !PyUnicode_Check(name) || PyUnicode_GET_LENGTH(name) == 0 || PyUnicode_READ_CHAR(name, 0) == '.';
}

/* Is this module-level name program structure (a dunder, a def, a class, an import), not state? */
static int
is_definition(Tracer *self, PyObject *name, PyObject *value)
{
    if (PyUnicode_GET_LENGTH(name) >= 2 && PyUnicode_READ_CHAR(name, 0) == '_' && PyUnicode_READ_CHAR(name, 1) == '_')
        return 1;
    return PyObject_IsInstance(value, self->definitions);
}

/* -- events ------------------------------------------------------------------------------------- */

/* One local of a line event: put its text in `texts`, and add to *size the extra bytes it takes
 * when it is written in full. */
static int
line_local(Tracer *self, Scope *scope, PyObject *texts, PyObject *name, PyObject *value, Py_ssize_t *size,
           PyObject **rewritten, int full)
{
    PyObject *seen = PyDict_GetItemWithError(scope->seen_of, name);
    if (seen == NULL && PyErr_Occurred())
        return -1;
    if (seen != NULL) {
        PyObject *items = AS_TRACKED(seen)->items;
        if (AS_TRACKED(seen)->value == value && (items == Py_None || same_items(value, items))) {
            if (full) /* unchanged, but written in full */
                *size += AS_TRACKED(seen)->nbytes - self->unchanged_len;
            return PyDict_SetItem(texts, name, AS_TRACKED(seen)->text); /* unchanged: ".." */
        }
    }
    else if (is_hidden(name))
        return 0;
    else {
        Py_ssize_t n = unchanged_bytes_of(self, name);
        if (n < 0)
            return -1;
        scope->unchanged_nbytes += n;
    }
    int how;
    PyObject *tracked = track(self, value, seen, &how);
    if (tracked == NULL)
        return -1;
    int status = -1;
    if (PyDict_SetItem(scope->seen_of, name, tracked) < 0 || PyDict_SetItem(texts, name, AS_TRACKED(tracked)->text) < 0)
        goto done;
    if (how != SAME || full)
        *size += AS_TRACKED(tracked)->nbytes - self->unchanged_len;
    if (how == REWRITTEN) {
        if (*rewritten == NULL && (*rewritten = PyList_New(0)) == NULL)
            goto done;
        if (PyList_Append(*rewritten, name) < 0)
            goto done;
    }
    status = 0;
done:
    Py_DECREF(tracked);
    return status;
}

/* Locals the scope remembers but the frame no longer has (del x) are forgotten. */
static int
forget_deleted(Tracer *self, Scope *scope, PyObject *texts)
{
    PyObject *gone = PyList_New(0);
    if (gone == NULL)
        return -1;
    Py_ssize_t pos = 0;
    PyObject *name, *tracked;
    while (PyDict_Next(scope->seen_of, &pos, &name, &tracked)) {
        int has = PyDict_Contains(texts, name);
        if (has < 0 || (!has && PyList_Append(gone, name) < 0))
            goto error;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(gone); i++) {
        PyObject *name = PyList_GET_ITEM(gone, i);
        Py_ssize_t n = unchanged_bytes_of(self, name);
        if (n < 0 || PyDict_DelItem(scope->seen_of, name) < 0)
            goto error;
        scope->unchanged_nbytes -= n;
    }
    Py_DECREF(gone);
    return 0;
error:
    Py_DECREF(gone);
    return -1;
}

static int
line_number(Tracer *self, PyFrameObject *frame)
{
    int lineno = PyFrame_GetLineNumber(frame);
    if (lineno < 0 || lineno >= self->nlines) {
        PyErr_Format(PyExc_RuntimeError, "line %d is not a line of the program", lineno);
        return -1;
    }
    return lineno;
}

/* The frame's locals as a dict (a new reference). A class body's namespace may be any mapping
 * (a metaclass's __prepare__): that one is copied. */
static PyObject *
frame_locals(PyFrameObject *frame)
{
    PyObject *locals = PyFrame_GetLocals(frame);
    if (locals == NULL || PyDict_Check(locals))
        return locals;
    PyObject *copy = PyDict_New();
    if (copy != NULL && PyDict_Merge(copy, locals, 1) < 0)
        Py_CLEAR(copy);
    Py_DECREF(locals);
    return copy;
}

/* A line of the innermost traced frame is about to run: record its locals. */
static int
on_line(Tracer *self, PyFrameObject *frame)
{
    Scope *scope = &self->scopes[self->nscopes - 1];
    int lineno = line_number(self, frame);
    if (lineno < 0)
        return -1;
    Py_ssize_t size = self->fixed[LINE_][lineno];
    PyObject *locals = frame_locals(frame);
    PyObject *texts = PyDict_New(), *rewritten = NULL, *names = NULL;
    int status = -1;
    if (locals == NULL || texts == NULL)
        goto done;
    Py_ssize_t pos = 0;
    PyObject *name, *value;
    while (PyDict_Next(locals, &pos, &name, &value)) {
        if (scope->is_module) {
            if (is_hidden(name))
                continue;
            int definition = is_definition(self, name, value);
            if (definition < 0)
                goto done;
            if (definition)
                continue;
        }
        Py_INCREF(name); /* user code (a __repr__) may change the locals dict under us */
        Py_INCREF(value);
        int r = line_local(self, scope, texts, name, value, &size, &rewritten, self->after_return);
        Py_DECREF(name);
        Py_DECREF(value);
        if (r < 0)
            goto done;
    }
    if (PyDict_GET_SIZE(scope->seen_of) != PyDict_GET_SIZE(texts) && forget_deleted(self, scope, texts) < 0)
        goto done;
    size += PyDict_GET_SIZE(texts) ? scope->unchanged_nbytes : 2; /* "{}" */
    if (check_limits(self, size) < 0)
        goto done;
    names = rewritten ? PyList_AsTuple(rewritten) : Py_NewRef(EMPTY_TUPLE);
    if (names != NULL)
        status = record(self, LINE_, lineno, texts, Py_None, names, size);
    if (status == 0)
        self->after_return = 0;
done:
    Py_XDECREF(locals);
    Py_XDECREF(texts);
    Py_XDECREF(rewritten);
    Py_XDECREF(names);
    return status;
}

/* The line a call frame shows: the def line (decorators skipped), or the yield a generator
 * resumes at. */
static int
call_line(Tracer *self, PyFrameObject *frame, PyCodeObject *code)
{
    int lineno = PyFrame_GetLineNumber(frame);
    if (lineno != 0 && lineno != code->co_firstlineno) /* a generator resuming */
        return line_number(self, frame);
    PyObject *key = PyLong_FromVoidPtr(code);
    if (key == NULL)
        return -1;
    PyObject *cached = PyDict_GetItemWithError(self->def_lines, key); /* (code, line): the code keeps its id */
    if (cached == NULL && !PyErr_Occurred()) {
        PyObject *line = PyObject_CallOneArg(self->def_line, (PyObject *)code);
        cached = line ? PyTuple_Pack(2, code, line) : NULL;
        Py_XDECREF(line);
        if (cached != NULL && PyDict_SetItem(self->def_lines, key, cached) == 0)
            Py_DECREF(cached); /* the dict holds it */
        else
            Py_CLEAR(cached);
    }
    Py_DECREF(key);
    if (cached == NULL)
        return -1;
    cached = PyTuple_GET_ITEM(cached, 1);
    lineno = (int)PyLong_AsLong(cached);
    if (lineno < 0 || lineno >= self->nlines) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "line %d is not a line of the program", lineno);
        return -1;
    }
    return lineno;
}

/* A new frame of the program's code: open its scope if it is (in) the traced call; every
 * local is written in full. */
static int
on_call(Tracer *self, PyFrameObject *frame, PyCodeObject *code)
{
    if (!self->started) {
        PyObject *r = PyObject_CallOneArg(self->is_entry, (PyObject *)frame);
        int entry = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
        if (entry <= 0)
            return entry;
        self->started = 1;
        if (self->timeout > 0)
            self->deadline = monotonic() + self->timeout;
    }
    int lineno = call_line(self, frame, code);
    if (lineno < 0)
        return -1;
    int is_module = self->whole_module && PyUnicode_Compare(code->co_name, MODULE_NAME) == 0;
    Py_ssize_t size = self->fixed[CALL_][lineno], unchanged_nbytes = 0;
    PyObject *locals = frame_locals(frame);
    PyObject *seen_of = PyDict_New(), *texts = PyDict_New();
    int status = -1;
    if (locals == NULL || seen_of == NULL || texts == NULL)
        goto done;
    Py_ssize_t pos = 0;
    PyObject *name, *value;
    while (PyDict_Next(locals, &pos, &name, &value)) {
        if (is_hidden(name))
            continue;
        if (is_module) {
            int definition = is_definition(self, name, value);
            if (definition < 0)
                goto done;
            if (definition)
                continue;
        }
        Py_INCREF(name);
        Py_INCREF(value);
        int how;
        PyObject *tracked = track(self, value, NULL, &how);
        Py_ssize_t n = tracked ? unchanged_bytes_of(self, name) : -1;
        int r = n < 0 || PyDict_SetItem(seen_of, name, tracked) < 0
                || PyDict_SetItem(texts, name, AS_TRACKED(tracked)->text) < 0;
        if (!r) {
            unchanged_nbytes += n;
            size += AS_TRACKED(tracked)->nbytes - self->unchanged_len;
        }
        Py_XDECREF(tracked);
        Py_DECREF(name);
        Py_DECREF(value);
        if (r)
            goto done;
    }
    size += PyDict_GET_SIZE(texts) ? unchanged_nbytes : 2; /* "{}" */
    if (check_limits(self, size) < 0)
        goto done;
    if (self->nscopes == self->capacity) {
        Py_ssize_t capacity = self->capacity ? 2 * self->capacity : 64;
        Scope *scopes = PyMem_Resize(self->scopes, Scope, capacity);
        if (scopes == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        self->scopes = scopes;
        self->capacity = capacity;
    }
    Scope *scope = &self->scopes[self->nscopes++];
    scope->frame = Py_NewRef(frame);
    scope->seen_of = Py_NewRef(seen_of);
    scope->unchanged_nbytes = unchanged_nbytes;
    scope->is_module = is_module;
    status = record(self, CALL_, lineno, texts, Py_None, EMPTY_TUPLE, size);
    if (status == 0)
        self->after_return = 0;
done:
    Py_XDECREF(locals);
    Py_XDECREF(seen_of);
    Py_XDECREF(texts);
    return status;
}

static void
pop_scope(Tracer *self)
{
    Scope *s = &self->scopes[--self->nscopes];
    Py_CLEAR(s->frame);
    Py_CLEAR(s->seen_of);
}

/* The innermost traced frame returns `value` (event RETURN_) or raises it (EXCEPTION_). */
static int
on_leave(Tracer *self, PyFrameObject *frame, int event, PyObject *value)
{
    int lineno = line_number(self, frame);
    if (lineno < 0)
        return -1;
    PyObject *text, *tracked = track_first_case(value, self->limit, NULL);
    Py_ssize_t size = self->fixed[event][lineno];
    if (tracked != NULL) { /* a number or a short string */
        text = Py_NewRef(AS_TRACKED(tracked)->text);
        size += AS_TRACKED(tracked)->nbytes;
        Py_DECREF(tracked);
    }
    else {
        if (PyErr_Occurred())
            return -1;
        text = PyObject_CallOneArg(self->text, value); /* its text: a str */
        if (text == NULL)
            return -1;
        if (!PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "text must return a str, not %.100s", Py_TYPE(text)->tp_name);
            Py_DECREF(text);
            return -1;
        }
        PyObject *quoted = PyObject_CallOneArg(json_str, text);
        if (quoted == NULL) {
            Py_DECREF(text);
            return -1;
        }
        size += PyUnicode_GET_LENGTH(quoted);
        Py_DECREF(quoted);
    }
    int status = check_limits(self, size) < 0 ? -1 : record(self, event, lineno, Py_None, text, EMPTY_TUPLE, size);
    Py_DECREF(text);
    if (status == 0 && event == RETURN_) {
        self->after_return = 1; /* the release's reader stops its walk for ".." at a return frame */
        pop_scope(self);
        if (self->nscopes == 0) { /* the entry scope is left: the trace is complete */
            self->done = self->completed = 1;
            set_trace_ours(NULL, NULL); /* nothing more to see: the rest runs at full speed */
        }
    }
    return status;
}

/* -- the trace function ----------------------------------------------------------------------- */

static int
trace(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    Tracer *self = (Tracer *)obj;
    if (self->done)
        return 0;
    int innermost = self->nscopes > 0 && self->scopes[self->nscopes - 1].frame == (PyObject *)frame;
    int status = 0;
    Py_INCREF(self); /* uninstalling (PyEval_SetTrace) drops a reference */
    if (what == PyTrace_LINE) {
        if (innermost)
            status = on_line(self, frame);
    }
    else if (what == PyTrace_CALL) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        PyObject *filename = code->co_filename;
        if (filename == self->filename || PyUnicode_Compare(filename, self->filename) == 0)
            status = on_call(self, frame, code);
        Py_DECREF(code);
    }
    else if (what == PyTrace_RETURN) {
        if (innermost) /* arg is NULL when an exception leaves the frame: sys.settrace shows None */
            status = on_leave(self, frame, RETURN_, arg ? arg : Py_None);
    }
    else if (what == PyTrace_EXCEPTION) {
        if (innermost) /* arg is (type, value, traceback) */
            status = on_leave(self, frame, EXCEPTION_, PyTuple_GET_ITEM(arg, 1));
    }
    if (status < 0 && !PyErr_ExceptionMatches(self->stop)) {
        /* a failure of the tracer (or the recursion limit): kept for recorder.py to report */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL)
            PyException_SetTraceback(value, tb);
        Py_XSETREF(self->failure, value ? value : Py_NewRef(Py_None));
        Py_XDECREF(type);
        Py_XDECREF(tb);
        self->done = 1;
        PyErr_SetNone(self->stop);
    }
    Py_DECREF(self);
    return status;
}

/* -- the Python type ---------------------------------------------------------------------------- */

static Py_ssize_t *
as_sizes(PyObject *list, Py_ssize_t n)
{
    if (list == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "fixed: a dict with a list for each of EVENTS");
        return NULL;
    }
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != n) {
        PyErr_SetString(PyExc_ValueError, "fixed: a list per event, with an item per line number (as source_of)");
        return NULL;
    }
    Py_ssize_t *sizes = PyMem_New(Py_ssize_t, n);
    if (sizes == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        sizes[i] = PyLong_AsSsize_t(PyList_GET_ITEM(list, i));
        if (sizes[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(sizes);
            return NULL;
        }
    }
    return sizes;
}

static int
Tracer_init(Tracer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"frames", "source_of", "fixed", "frame_type", "track", "text", "definitions", "is_entry",
                             "def_line", "check_limits", "filename", "stop", "limit", "max_events", "max_bytes",
                             "unchanged_len", "nbytes", "timeout", "whole_module", NULL};
    PyObject *frames, *source_of, *fixed, *frame_type, *track, *text, *definitions, *is_entry, *def_line,
        *check, *filename, *stop;
    Py_ssize_t limit, max_events, max_bytes, unchanged_len, nbytes;
    double timeout;
    int whole_module;
    if (self->frames != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Tracer is set up once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$O!O!O!OOOOOOOUOnnnnndp", kwlist, &PyList_Type, &frames,
                                     &PyList_Type, &source_of, &PyDict_Type, &fixed, &frame_type, &track, &text,
                                     &definitions, &is_entry, &def_line, &check, &filename, &stop, &limit,
                                     &max_events, &max_bytes, &unchanged_len, &nbytes, &timeout, &whole_module))
        return -1;
    if (PyDict_GET_SIZE(fixed) != NEVENTS) {
        PyErr_SetString(PyExc_ValueError, "fixed: a dict with a list for each of EVENTS, and nothing else");
        return -1;
    }
    self->nlines = PyList_GET_SIZE(source_of);
    for (int e = 0; e < NEVENTS; e++)
        if ((self->fixed[e] = as_sizes(PyDict_GetItemWithError(fixed, EVENT_NAMES[e]), self->nlines)) == NULL)
            return -1;
    if (!PyType_Check(frame_type)) {
        PyErr_SetString(PyExc_TypeError, "frame_type must be format.Frame");
        return -1;
    }
    for (int i = 0; i < NFRAME_FIELDS; i++) {
        PyObject *slot = PyObject_GetAttrString(frame_type, FRAME_FIELDS[i]);
        if (slot == NULL)
            return -1;
        int ok = Py_IS_TYPE(slot, &PyMemberDescr_Type) && ((PyMemberDescrObject *)slot)->d_member->type == T_OBJECT_EX;
        if (ok)
            self->frame_slots[i] = ((PyMemberDescrObject *)slot)->d_member->offset;
        Py_DECREF(slot);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "frame_type must have __slots__ with the fields of format.Frame (%s)",
                         FRAME_FIELDS[i]);
            return -1;
        }
    }
    if ((self->def_lines = PyDict_New()) == NULL)
        return -1;
    self->frames = Py_NewRef(frames);
    self->source_of = Py_NewRef(source_of);
    self->frame_type = Py_NewRef(frame_type);
    self->track = Py_NewRef(track);
    self->text = Py_NewRef(text);
    self->definitions = Py_NewRef(definitions);
    self->is_entry = Py_NewRef(is_entry);
    self->def_line = Py_NewRef(def_line);
    self->check_limits = Py_NewRef(check);
    self->filename = Py_NewRef(filename);
    self->stop = Py_NewRef(stop);
    self->limit = limit;
    self->max_events = max_events;
    self->max_bytes = max_bytes;
    self->unchanged_len = unchanged_len;
    self->nbytes = nbytes;
    self->timeout = timeout;
    self->whole_module = (char)whole_module;
    return 0;
}

static void
clear_scopes(Tracer *self)
{
    while (self->nscopes > 0)
        pop_scope(self);
}

static int
Tracer_traverse(Tracer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->frames);
    Py_VISIT(self->source_of);
    Py_VISIT(self->frame_type);
    Py_VISIT(self->track);
    Py_VISIT(self->text);
    Py_VISIT(self->definitions);
    Py_VISIT(self->is_entry);
    Py_VISIT(self->def_line);
    Py_VISIT(self->check_limits);
    Py_VISIT(self->filename);
    Py_VISIT(self->stop);
    Py_VISIT(self->def_lines);
    Py_VISIT(self->failure);
    for (Py_ssize_t i = 0; i < self->nscopes; i++) {
        Py_VISIT(self->scopes[i].frame);
        Py_VISIT(self->scopes[i].seen_of);
    }
    return 0;
}

static int
Tracer_clear(Tracer *self)
{
    Py_CLEAR(self->frames);
    Py_CLEAR(self->source_of);
    Py_CLEAR(self->frame_type);
    Py_CLEAR(self->track);
    Py_CLEAR(self->text);
    Py_CLEAR(self->definitions);
    Py_CLEAR(self->is_entry);
    Py_CLEAR(self->def_line);
    Py_CLEAR(self->check_limits);
    Py_CLEAR(self->filename);
    Py_CLEAR(self->stop);
    Py_CLEAR(self->def_lines);
    Py_CLEAR(self->failure);
    clear_scopes(self);
    return 0;
}

static void
Tracer_dealloc(Tracer *self)
{
    if (watched == self)
        watched = NULL;
    PyObject_GC_UnTrack(self);
    Tracer_clear(self);
    PyMem_Free(self->scopes);
    for (int e = 0; e < NEVENTS; e++)
        PyMem_Free(self->fixed[e]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Tracer_install(Tracer *self, PyObject *Py_UNUSED(ignored))
{
    if (self->frames == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the Tracer was not set up");
        return NULL;
    }
    watched = self;
    watched_tstate = PyThreadState_Get();
    set_trace_ours(trace, (PyObject *)self);
    Py_RETURN_NONE;
}

static PyObject *
Tracer_close(Tracer *self, PyObject *Py_UNUSED(ignored))
{
    if (watched == self)
        watched = NULL;
    clear_scopes(self); /* the frames (and their locals) are let go once the run is over */
    Py_RETURN_NONE;
}

static PyMethodDef Tracer_methods[] = {
    {"install", (PyCFunction)Tracer_install, METH_NOARGS, "make this the thread's trace function"},
    {"close", (PyCFunction)Tracer_close, METH_NOARGS, "let go of the open scopes' frames"},
    {NULL},
};

static PyMemberDef Tracer_members[] = {
    {"nbytes", T_PYSSIZET, offsetof(Tracer, nbytes), READONLY, "bytes of the trace text so far"},
    {"deadline", T_DOUBLE, offsetof(Tracer, deadline), READONLY, "time.monotonic() past which to stop; 0: none"},
    {"started", T_BOOL, offsetof(Tracer, started), READONLY, "the entry was called"},
    {"completed", T_BOOL, offsetof(Tracer, completed), READONLY, "the entry's scope was left: the trace is whole"},
    {"done", T_BOOL, offsetof(Tracer, done), 0, "recording has ended: every event is ignored"},
    {"failure", T_OBJECT, offsetof(Tracer, failure), READONLY, "the exception that ended recording, or None"},
    {"displaced", T_BOOL, offsetof(Tracer, displaced), READONLY, "another settrace ran while installed (until close)"},
    {NULL},
};

static PyTypeObject TracerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cwm.trace._ctrace.Tracer",
    .tp_doc = PyDoc_STR("The trace function of one recording (see recorder.py)."),
    .tp_basicsize = sizeof(Tracer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tracer_init,
    .tp_dealloc = (destructor)Tracer_dealloc,
    .tp_traverse = (traverseproc)Tracer_traverse,
    .tp_clear = (inquiry)Tracer_clear,
    .tp_methods = Tracer_methods,
    .tp_members = Tracer_members,
};

static PyMethodDef module_functions[] = {
    {"starts_with", (PyCFunction)(void (*)(void))py_starts_with, METH_FASTCALL,
     "starts_with(value, items): are the first len(items) items (keys and values) of this list or dict the "
     "very objects of its snapshot `items` (a list or a dict), in order? (identity, no user code)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "cwm.trace._ctrace",
    .m_doc = "The tracer's trace function, in C (see recorder.py).", .m_size = -1, .m_methods = module_functions,
};

/* A tuple of str from C strings, for the module's exports. */
static PyObject *
str_tuple(const char **strings, int n)
{
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t != NULL && i < n; i++) {
        PyObject *s = PyUnicode_InternFromString(strings[i]);
        if (s == NULL)
            Py_CLEAR(t);
        else
            PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

/* The module's exports besides Tracer and starts_with: what C and Python must agree on. */
static int
add_contract(PyObject *m)
{
    PyObject *events = str_tuple(EVENT_SPELLINGS, NEVENTS), *fields = str_tuple(FRAME_FIELDS, NFRAME_FIELDS);
    int status = -1;
    if (events != NULL && fields != NULL && PyModule_AddObjectRef(m, "EVENTS", events) == 0
        && PyModule_AddObjectRef(m, "FRAME_FIELDS", fields) == 0 && PyModule_AddIntConstant(m, "SAME", SAME) == 0
        && PyModule_AddIntConstant(m, "CHANGED", CHANGED) == 0
        && PyModule_AddIntConstant(m, "REWRITTEN", REWRITTEN) == 0
        && PyModule_AddObjectRef(m, "Tracked", (PyObject *)&TrackedType) == 0)
        status = 0;
    Py_XDECREF(events);
    Py_XDECREF(fields);
    return status;
}

PyMODINIT_FUNC
PyInit__ctrace(void)
{
    if (PyType_Ready(&TracerType) < 0 || PySys_AddAuditHook(settrace_audit, NULL) < 0)
        return NULL;
    for (int e = 0; e < NEVENTS; e++)
        if ((EVENT_NAMES[e] = PyUnicode_InternFromString(EVENT_SPELLINGS[e])) == NULL)
            return NULL;
    if (PyType_Ready(&TrackedType) < 0)
        return NULL;
    PyObject *match_args = str_tuple(TRACKED_FIELDS, NTRACKED); /* its fields in order, for `match` and readers */
    int failed = match_args == NULL || PyDict_SetItemString(TrackedType.tp_dict, "__match_args__", match_args) < 0;
    Py_XDECREF(match_args);
    if (failed)
        return NULL;
    PyType_Modified(&TrackedType);
    PyObject *json = PyImport_ImportModule("json.encoder");
    if (json == NULL)
        return NULL;
    json_str = PyObject_GetAttrString(json, "encode_basestring_ascii");
    Py_DECREF(json);
    if (json_str == NULL)
        return NULL;
    MODULE_NAME = PyUnicode_InternFromString("<module>");
    EMPTY_TUPLE = PyTuple_New(0);
    if (!MODULE_NAME || !EMPTY_TUPLE)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Tracer", (PyObject *)&TracerType) < 0 || add_contract(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
