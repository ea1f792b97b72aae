/* A layer's files grouped by the Python package they are part of, for the
 * guess of what a starting interpreter reads next: it imports a package's
 * subpackages one after another, each import a miss known only once the
 * one before has run, and a package's modules lie in its whole tree, not
 * in one directory.  Packages are the directories with an __init__.py; a
 * file is part of its topmost one (the interpreter imports a package's
 * parents first), compiled modules of the directory above their
 * __pycache__ (private to fs/). */
#pragma once

#include "layer.h"

struct py_packages;

/* Groups the regular files with data of entries[0, n), which lie in blob
 * order and must outlive it; *ret is NULL for a layer with no package. */
int py_packages_new(const struct entry *entries, size_t n, struct py_packages **ret);
void py_packages_free(struct py_packages *p);
/* True once per package: for the first of its modules (.py, .pyc) to get
 * here.  Thread-safe. */
bool py_package_first_read(struct py_packages *p, const struct entry *e);
/* The guess at module e: its package's other modules of e's kind
 * (compiled for the same interpreter, or sources where it runs from
 * sources) and its extension modules (.so), its tests left out, in blob
 * order, at most max into out; returns how many. */
size_t py_package_guess(const struct py_packages *p, const struct entry *e, const struct entry **out, size_t max);
