"""The package's shape: each module imports only modules of notebooks before its own (no import circle, even through
imports inside functions), every exported cell of a notebook is followed by a cell that shows and checks it, and no
module or function outgrows a reading."""
import ast, json
from pathlib import Path

ROOT = Path(__file__).parents[1]


def notebook_order() -> dict:
    "qvl module -> its notebook's number, from each notebook's `default_exp`."
    out = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        first = ''.join(json.loads(nb.read_text())['cells'][0]['source'])
        out[first.split('default_exp', 1)[1].strip()] = int(nb.name[:2])
    return out


def qvl_imports(path: Path) -> set:
    "The qvl modules a module imports, at the top or inside functions."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = ('qvl.' + node.module if node.level and node.module else node.module or '')
            if mod.startswith('qvl.'): found.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('qvl.')}
    return found


def test_modules_import_only_earlier_notebooks():
    order = notebook_order()
    assert set(order) == {p.stem for p in (ROOT / 'qvl').glob('*.py') if not p.stem.startswith('_')}
    late = {m: sorted(d for d in qvl_imports(ROOT / 'qvl' / f'{m}.py') - {m} if order[d] > order[m]) for m in order}
    assert not any(late.values()), {m: d for m, d in late.items() if d}


def test_every_exported_cell_is_followed_by_a_check():
    "After each exported cell (prose between allowed) comes a cell that runs it; the imports cell and the entry point aside."
    missing = []
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        src = [''.join(c['source']) for c in cells]
        export = [c['cell_type'] == 'code' and s.lstrip().startswith('#| export') for c, s in zip(cells, src)]
        for i, s in enumerate(src):
            if not export[i] or 'from __future__ import annotations' in s or "if __name__ == '__main__'" in s: continue
            j = i + 1
            while j < len(cells) and cells[j]['cell_type'] == 'markdown': j += 1
            if j == len(cells) or export[j]: missing.append(f"{nb.name}: {s.splitlines()[1][:60]}")
    assert not missing, missing


def test_no_module_over_about_500_lines_and_no_function_over_80():
    "A module a reader takes in at one sitting, a function that fits on a screen (the generated index aside)."
    long_modules, long_defs = [], []
    for p in sorted((ROOT / 'qvl').glob('*.py')):
        if p.stem.startswith('_'): continue
        text = p.read_text()
        if len(text.splitlines()) > 510: long_modules.append((p.name, len(text.splitlines())))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.end_lineno - node.lineno >= 80:
                long_defs.append((p.name, node.name, node.end_lineno - node.lineno + 1))
    assert not long_modules and not long_defs, (long_modules, long_defs)


def test_every_notebook_shows_its_outputs():
    "Notebooks are stored with their CPU cells' outputs (`make outputs`): each shows some, none an error or a bare widget."
    bare, errors = [], []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        outs = [o for c in json.loads(nb.read_text())['cells'] for o in c.get('outputs', [])]
        if not outs: bare.append(nb.name)
        errors += [nb.name for o in outs if o['output_type'] == 'error' or 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    assert not bare and not errors, (bare, errors)
