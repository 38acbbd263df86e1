"""The browser view: ``meshemu view RUN_DIR`` and ``meshemu run --view``.

``data.py`` reads a run (or plan) directory into the JSON the page asks for (``RunData``),
``server.py`` serves it with the page (``ViewServer``, standard library ``http.server``),
``live.py`` is the step loop's observer of a live run (``LiveFeed``: the loop only
enqueues the step index; the page follows through server-sent events), ``commands.py`` the
two commands. The page (``static/``) draws with three.js, uPlot and Natural Earth
coastlines (world-atlas), npm packages pinned in ``web/package-lock.json`` and installed by
``install.sh`` into ``web/node_modules``; nothing is loaded from any other host.
"""
