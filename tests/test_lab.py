"""JupyterLab as a researcher uses it: a real JupyterLab server with the project's kernel, driven in headless Chromium
(Debian's chromium and chromium-driver, which `make browser` installs where missing) through Selenium.

Screenshots are saved in test-output/lab/ (printed at the end of each test)."""
import json, os, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHOTS = ROOT / 'test-output' / 'lab'
CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
BIN = Path(sys.executable).parent


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    return (f"no browser to test JupyterLab in: {', '.join(missing)} missing; `make browser` installs Debian's chromium "
            f"and chromium-driver (apt-get, as root)") if missing else None


class Lab:
    "A JupyterLab server on a free local port serving `root`, and a headless Chromium driven by Selenium."
    def __init__(self, root: Path, tmp: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        s = socket.socket(); s.bind(('127.0.0.1', 0)); self.port = s.getsockname()[1]; s.close()
        self.token, self.base = 'qvl-test', f'http://127.0.0.1:{self.port}'
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / 'jupyter-config'), JUPYTER_RUNTIME_DIR=str(tmp / 'jupyter-runtime'))
        labconfig = tmp / 'jupyter-config' / 'labconfig'      # no question about Jupyter's news over the notebook
        labconfig.mkdir(parents=True)
        (labconfig / 'page_config.json').write_text(json.dumps({'disabledExtensions': {'@jupyterlab/apputils-extension:announcements': True}}))
        self.log = open(tmp / 'jupyterlab.log', 'w')
        self.server = subprocess.Popen(
            [str(BIN / 'jupyter'), 'lab', '--no-browser', f'--port={self.port}', '--ip=127.0.0.1', '--allow-root',
             f'--ServerApp.token={self.token}', f'--ServerApp.root_dir={root}', '--LabApp.expose_app_in_browser=True',
             '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        for _ in range(200):
            try: urllib.request.urlopen(f'{self.base}/api/status?token={self.token}', timeout=2); break
            except Exception: time.sleep(0.3)
        else: raise AssertionError(f"JupyterLab did not start: {(tmp / 'jupyterlab.log').read_text()[-2000:]}")
        o = webdriver.ChromeOptions(); o.binary_location = CHROMIUM
        for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
                  '--disable-background-networking', '--disable-component-update', f'--user-data-dir={tmp / "chromium"}',
                  '--window-size=1400,1100'):
            o.add_argument(a)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)

    def js(self, script: str, *args): return self.driver.execute_script(script, *args)

    def open(self, path: str, timeout: float = 120):
        "Open a notebook (relative to the server's root) and wait until its kernel is connected and idle; returns its kernel's name."
        self.driver.get(f'{self.base}/lab/tree/{path}?token={self.token}')
        ready = ("const a = window.jupyterapp, w = a && a.shell.currentWidget, k = w && w.sessionContext && "
                 "w.sessionContext.session && w.sessionContext.session.kernel; "
                 "return k && k.connectionStatus === 'connected' && k.status === 'idle' ? k.name : null")
        t0 = time.time()
        while time.time() - t0 < timeout:
            name = self.js(ready)
            if name: return name
            time.sleep(0.3)
        raise AssertionError(f"{path}: its kernel never became ready in JupyterLab")

    def outputs(self) -> dict:
        "What the open notebook's outputs show now: progress bar widgets' texts and images."
        return self.js("const o = '.jp-OutputArea-output'; return {"
                       "bars: Array.from(document.querySelectorAll(o + ' .widget-hbox')).map(e => e.innerText.replace(/\\s+/g, ' ')),"
                       "images: document.querySelectorAll(o + ' img').length,"
                       "errors: Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]'))"
                       ".map(e => e.innerText).filter(t => t.includes('Error'))}")

    def shot(self, name: str, image: int | None = None) -> Path:
        "A screenshot; with `image`, the notebook scrolled to that output image (its index, -1 the last)."
        if image is not None:
            self.js("const i = Array.from(document.querySelectorAll('.jp-OutputArea-output img')).at(arguments[0]); "
                    "i && i.scrollIntoView({block: 'end'})", image)
            time.sleep(0.5)
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(SHOTS / name))
        return SHOTS / name

    def close(self):
        self.driver.quit(); self.server.terminate(); self.server.wait(30); self.log.close()


@pytest.fixture(scope='module')
def lab_root(tmp_path_factory):
    "A folder served by JupyterLab, and the project's kernel (`make lab` registers it the same way) in this environment."
    if (msg := _browser_missing()): pytest.fail(msg)
    subprocess.run([sys.executable, '-m', 'ipykernel', 'install', '--sys-prefix', '--name', 'qvl', '--display-name', 'Python (qvl)'],
                   check=True, capture_output=True)
    return tmp_path_factory.mktemp('lab')


@pytest.fixture
def lab(lab_root, tmp_path):
    lab = Lab(lab_root, tmp_path)
    yield lab
    lab.close()


def test_training_notebook_shows_live_loss_plot_and_progress_in_jupyterlab(lab, lab_root):
    """The finetune template trains the tiny model in JupyterLab with the qvl kernel: the loss plot appears while the
    progress bar is still short of 100% (it is live), the bar reaches 100%, and no cell fails."""
    nb = lab_root / 'finetune.ipynb'
    subprocess.run([str(BIN / 'papermill'), str(ROOT / 'experiments' / 'finetune.ipynb'), str(nb), '--prepare-only',
                    '-p', 'steps', '60', '-p', 'n', '40', '-p', 'detail_budgets', '224,56', '-p', 'out_dir', str(lab_root / 'ft')],
                   check=True, capture_output=True)
    prepared = json.loads(nb.read_text())
    prepared['metadata']['kernelspec'] = dict(name='qvl', display_name='Python (qvl)', language='python')
    nb.write_text(json.dumps(prepared))
    assert lab.open(nb.name) == 'qvl'
    lab.js("window.__qvl_done = null; window.jupyterapp.commands.execute('notebook:run-all-cells')"
           ".then(r => window.__qvl_done = 'ok ' + r, e => window.__qvl_done = 'error ' + e)")
    live, t0, done = None, time.time(), None
    while time.time() - t0 < 600 and not done:
        out = lab.outputs()
        train = [b for b in out['bars'] if b.startswith('train')]
        if live is None and out['images'] and train and '100%' not in train[0]:
            live = (train[0], lab.shot('finetune-live.png', image=0))
        done = lab.js("return window.__qvl_done")
        time.sleep(0.25)
    out = lab.outputs()
    final = lab.shot('finetune-done.png', image=0)
    print(f"\nscreenshots: {live[1] if live else '-'}, {final}")
    assert done == 'ok true', done
    assert not out['errors'], out['errors']
    assert live, f"no loss plot while training ran: {out}"      # the plot was there before the bar was full
    train = [b for b in out['bars'] if b.startswith('train')]
    assert train and '100%' in train[0] and '60/60' in train[0], out['bars']
    assert out['images'] >= 3                     # the live loss curve, loss.png's figure, the detail check's figure
    assert (lab_root / 'ft' / 'run' / 'log.csv').exists() and len((lab_root / 'ft' / 'run' / 'log.csv').read_text().splitlines()) > 1


def test_executed_vram_sweep_notebook_shows_its_figures_in_jupyterlab(lab, lab_root):
    "A `qvl sweep vram_sweep` run's executed notebook opens in JupyterLab with every figure the run saved."
    from conftest import run_qvl
    runs = lab_root / 'runs'
    run_qvl('sweep', 'vram_sweep', '-p', 'models', 'Qwen2.5-VL-3B', '-p', 'sides', '448,1344', '-p', 'batches', '1,2',
            '-p', 'cpu_sides', '224', '-p', 'cpu_batches', '1', '--runs-dir', runs)
    run = next(d for d in (runs / 'vram_sweep').iterdir() if (d / 'done.json').exists())
    executed = next(run.glob('*.ipynb'))
    figures = sorted(p.name for p in run.glob('*.png'))
    nb = json.loads(executed.read_text())
    in_notebook = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    assert len(figures) >= 4 and in_notebook >= len(figures)
    lab.open(executed.relative_to(lab_root).as_posix())
    t0 = time.time()
    while time.time() - t0 < 60 and lab.outputs()['images'] < in_notebook: time.sleep(0.3)
    shown = lab.outputs()['images']
    path = lab.shot('vram-sweep.png', image=0)
    print(f"\nscreenshot: {path}")
    assert shown == in_notebook, (shown, in_notebook, figures)
    # each shown image is a real picture, drawn at its size
    sizes = lab.js("return Array.from(document.querySelectorAll('.jp-OutputArea-output img')).map(i => [i.naturalWidth, i.naturalHeight])")
    assert all(w > 300 and h > 200 for w, h in sizes), sizes
