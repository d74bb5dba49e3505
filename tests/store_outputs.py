"""Run the notebooks' CPU cells and store their outputs in the notebooks (`make outputs`), so that they read as
documentation with their tables and figures; cells flagged `#| gpu` or `#| notest`, and `#| eval: false`, are left
unrun, as `nbdev_test` leaves them. Progress bars are off while storing: their widgets have no content to keep."""
import os, re, sys
from pathlib import Path

os.environ['TQDM_DISABLE'] = '1'
os.environ.setdefault('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory

SKIP = re.compile(r'^#\|\s*(gpu|notest)\b|^#\|\s*eval:\s*false', re.M)
WIDGET = 'application/vnd.jupyter.widget-view+json'


def unrun(cell) -> bool:
    return cell.cell_type != 'code' or bool(SKIP.search(cell.source))


def kept(outputs) -> list:
    "The outputs worth storing: no widget views (their state is not stored), no empty streams."
    keep = []
    for o in outputs:
        data = o.get('data') or {}
        if WIDGET in data:
            data = {k: v for k, v in data.items() if k not in (WIDGET, 'text/plain')}
            if not data: continue
            o['data'] = data
        if o.get('output_type') == 'stream' and not ''.join(o.get('text', '')).strip(): continue
        keep.append(o)
    return keep


def store(path: Path) -> int:
    "Run `path`'s CPU cells in order, keep their outputs in the file; the number of cells that show something."
    nb = read_nb(path)
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs = []
    with working_directory(path.parent):
        CaptureShell(str(path)).run_all(nb, exc_stop=True, preproc=unrun)
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs = kept(c.get('outputs', []))
    write_nb(nb, path)
    return sum(bool(c.get('outputs')) for c in nb.cells)


if __name__ == '__main__':
    nbs = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).parents[1].glob('nbs/*.ipynb'))
    for p in nbs: print(f'{p.name}: {store(p)} cells with outputs', flush=True)
