"""Writes the two notebooks from the cells below (run: python notebooks/_build.py); outputs are not stored."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

INSPECT = [
    new_markdown_cell(
        "# Inspect runs\n"
        "Learning curves (mean ± std across seeds) for the train env and each test mode, the "
        "generalization gap, saliency consistency, a final results table and the latest saliency grids, "
        "all read from MLflow through its client API.\n\n"
        "Set `MLFLOW_TRACKING_URI` (default `sqlite:///mlflow.db`) and `SGQN_EXPERIMENT` (default: the "
        "most recently updated experiment) or edit the next cell."
    ),
    new_code_cell(
        "import os\n"
        "import re\n"
        "from collections import defaultdict\n\n"
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "import pandas as pd\n"
        "from mlflow import MlflowClient\n\n"
        "TRACKING_URI = os.environ.get('MLFLOW_TRACKING_URI', 'sqlite:///mlflow.db')\n"
        "EXPERIMENT = os.environ.get('SGQN_EXPERIMENT')\n"
        "client = MlflowClient(tracking_uri=TRACKING_URI)\n"
        "experiments = client.search_experiments(order_by=['last_update_time DESC'])\n"
        "experiment = next(e for e in experiments if EXPERIMENT in (None, e.name))\n"
        "runs = client.search_runs([experiment.experiment_id], order_by=['start_time DESC'])\n"
        "runs = [r for r in runs if r.data.tags.get('sgqn_kind') != 'sweep']  # a sweep's parent run trains nothing\n"
        "print(f'experiment {experiment.name!r}: {len(runs)} runs')"
    ),
    new_code_cell(
        "# A 'method' is an (algorithm, task) pair; its runs are seeds.\n"
        "def method(run):\n"
        "    p = run.data.params\n"
        "    return f\"{p.get('algorithm', '?')}/{p.get('task', '?')}\"\n\n"
        "eval_keys = sorted({k for r in runs for k in r.data.metrics if re.fullmatch(r'eval/[^/]+/return_mean', k)})\n"
        "modes = [k.split('/')[1] for k in eval_keys]\n"
        "groups = defaultdict(list)\n"
        "for run in runs:\n"
        "    groups[method(run)].append(run)\n"
        "print(dict((m, len(rs)) for m, rs in groups.items()), modes)"
    ),
    new_code_cell(
        "def curves(run_list, key):\n"
        '    """Steps and values (seeds × steps) of a metric, on the steps all seeds share."""\n'
        "    histories = [{m.step: m.value for m in client.get_metric_history(r.info.run_id, key)} for r in run_list]\n"
        "    steps = sorted(set.intersection(*(set(h) for h in histories))) if histories else []\n"
        "    return np.array(steps), np.array([[h[s] for s in steps] for h in histories])\n\n"
        "fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(4 * max(1, len(modes)), 3), squeeze=False)\n"
        "for ax, mode in zip(axes[0], modes):\n"
        "    for name, run_list in groups.items():\n"
        "        steps, values = curves(run_list, f'eval/{mode}/return_mean')\n"
        "        if len(steps):\n"
        "            mean, std = values.mean(0), values.std(0)\n"
        "            ax.plot(steps, mean, label=name)\n"
        "            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)\n"
        "    ax.set(title=mode, xlabel='agent steps', ylabel='return')\n"
        "axes[0][0].legend(fontsize=7)\n"
        "fig.tight_layout()"
    ),
    new_code_cell(
        "# Generalization gap (train − mode) and saliency consistency (mask IoU with train), per mode.\n"
        "for prefix, title in [('generalization_gap', 'generalization gap'), ('saliency_iou', 'saliency IoU with train')]:\n"
        "    keys = sorted({k for r in runs for k in r.data.metrics if k.endswith('/' + prefix)})\n"
        "    if not keys:\n"
        "        continue\n"
        "    fig, ax = plt.subplots(figsize=(5, 3))\n"
        "    for name, run_list in groups.items():\n"
        "        for key in keys:\n"
        "            steps, values = curves(run_list, key)\n"
        "            if len(steps):\n"
        "                ax.plot(steps, values.mean(0), label=f\"{name} {key.split('/')[1]}\")\n"
        "    ax.set(title=title, xlabel='agent steps')\n"
        "    ax.legend(fontsize=7)"
    ),
    new_code_cell(
        "# Results table: last evaluation of each run, mean ± std across seeds (DMC-GB style).\n"
        "rows = []\n"
        "for name, run_list in groups.items():\n"
        "    row = {'method': name, 'seeds': len(run_list)}\n"
        "    for mode in modes:\n"
        "        finals = [r.data.metrics[f'eval/{mode}/return_mean'] for r in run_list if f'eval/{mode}/return_mean' in r.data.metrics]\n"
        "        row[mode] = f'{np.mean(finals):.0f} ± {np.std(finals):.0f}' if finals else ''\n"
        "    rows.append(row)\n"
        "table = pd.DataFrame(rows)\n"
        "table"
    ),
    new_code_cell(
        "# The latest saliency grid of the most recent run that logged one.\n"
        "from PIL import Image\n\n"
        "def latest_grid(run):\n"
        "    files = [f.path for f in client.list_artifacts(run.info.run_id, 'saliency') if f.path.endswith('.png')]\n"
        "    return sorted(files)[-1] if files else None\n\n"
        "for run in runs:\n"
        "    path = latest_grid(run)\n"
        "    if path:\n"
        "        local = client.download_artifacts(run.info.run_id, path)\n"
        "        grid = Image.open(local)\n"
        "        fig, ax = plt.subplots(figsize=(grid.width / 60, grid.height / 60))\n"
        "        ax.imshow(grid)\n"
        "        ax.set_title(f'{method(run)} {path}')\n"
        "        ax.axis('off')\n"
        "        break\n"
        "else:\n"
        "    print('no saliency grid logged yet')"
    ),
    new_markdown_cell(
        "## A sweep\n"
        "The table of `sgqn report` for one sweep: `SGQN_SWEEP` (its parent run id or name), else the newest "
        "sweep of this experiment (a parent run tagged `sgqn_kind=sweep`). Cells are mean ± std over the "
        "complete seeds of each trial's final evaluation return; trials with no run, or whose run failed or "
        "stopped early, are listed below the table instead."
    ),
    new_code_cell(
        "from sgqn.app.report.collect import collect_sweep\n"
        "from sgqn.app.report.figures import draw_task, plot_modes\n"
        "from sgqn.app.report.table import build_table, missing_text\n"
        "from sgqn.app.sweeps.tracking import KIND_SWEEP, KIND_TAG\n\n"
        "SWEEP = os.environ.get('SGQN_SWEEP')\n"
        "if SWEEP is None:\n"
        "    parents = client.search_runs(\n"
        "        [experiment.experiment_id], f\"tags.{KIND_TAG} = '{KIND_SWEEP}'\", order_by=['start_time DESC'], max_results=1\n"
        "    )\n"
        "    SWEEP = parents[0].info.run_id if parents else None\n"
        "sweep = collect_sweep(client, SWEEP) if SWEEP else None\n"
        "if sweep is None:\n"
        "    print(f'no sweep in experiment {experiment.name!r} (SGQN_SWEEP names one elsewhere)')\n"
        "else:\n"
        "    sweep_table = build_table(sweep)\n"
        "    print(f'sweep {sweep.name!r} (parent run {sweep.parent_run_id}): {len(sweep.complete)}/{len(sweep.trials)} trials complete')\n"
        "    cells = {\n"
        "        (method, mode): [sweep_table.cell_text(task, method, mode) for task in sweep_table.tasks]\n"
        "        + [sweep_table.averages[(method, mode)].text()]\n"
        "        for method, mode in sweep_table.columns\n"
        "    }\n"
        "    display(pd.DataFrame(cells, index=[*sweep_table.tasks, 'average']))\n"
        "    print('\\n'.join(sweep_table.footnotes))\n"
        "    print(missing_text(sweep_table))"
    ),
    new_code_cell(
        "# Learning curves of the sweep: mean over complete seeds, ±std band, on the steps all seeds share.\n"
        "if sweep is not None:\n"
        "    curve_modes = plot_modes(sweep)  # train and video_hard where evaluated\n"
        "    for task in sweep.tasks:\n"
        "        fig, axes = plt.subplots(1, len(curve_modes), figsize=(4.2 * len(curve_modes), 3.2), squeeze=False)\n"
        "        draw_task(list(axes[0]), sweep, task, curve_modes)\n"
        "        fig.tight_layout()\n"
        "        plt.show()"
    ),
]

EXPLORER = [
    new_markdown_cell(
        "# Saliency explorer\n"
        "Load a checkpoint from an MLflow run, roll out an episode in a chosen test mode and look at "
        "observation / attribution / mask / masked observation / predicted mask side by side. The task's "
        "bodies (MuJoCo's segmentation: where the critic should look) are outlined in cyan on the "
        "observations, and the critic's focus on them is scored.\n\n"
        "`MLFLOW_TRACKING_URI`, `SGQN_EXPERIMENT`, `SGQN_MODE` (default `video_hard`) configure it."
    ),
    new_code_cell(
        "import os\n\n"
        "import matplotlib.pyplot as plt\n"
        "import torch\n"
        "from mlflow import MlflowClient\n\n"
        "import sgqn.envs  # selects the OpenGL backend before dm_control loads\n"
        "from sgqn.data.datamodule import DMCDataModule\n"
        "from tensordict import TensorDict\n\n"
        "from sgqn.evaluation.attribution import saliency_maps\n"
        "from sgqn.evaluation.focus import focus_scores\n"
        "from sgqn.evaluation.generalization import collect_states, stacked_observations\n"
        "from sgqn.evaluation.ground_truth import stacked_body_masks\n"
        "from sgqn.evaluation.viz import saliency_grid\n"
        "from sgqn.training.module import AgentModule\n\n"
        "TRACKING_URI = os.environ.get('MLFLOW_TRACKING_URI', 'sqlite:///mlflow.db')\n"
        "EXPERIMENT = os.environ.get('SGQN_EXPERIMENT')\n"
        "MODE = os.environ.get('SGQN_MODE', 'video_hard')\n"
        "client = MlflowClient(tracking_uri=TRACKING_URI)\n"
        "experiments = client.search_experiments(order_by=['last_update_time DESC'])\n"
        "experiment = next(e for e in experiments if EXPERIMENT in (None, e.name))"
    ),
    new_code_cell(
        "# The newest run with a checkpoint: in the folder its checkpoint_dir tag names, else uploaded.\n"
        "from sgqn.app.runs import find_checkpoint\n"
        "\n"
        "for run in client.search_runs([experiment.experiment_id], order_by=['start_time DESC']):\n"
        "    try:\n"
        "        local = find_checkpoint(run.info.run_id, TRACKING_URI)\n"
        "        break\n"
        "    except FileNotFoundError:\n"
        "        continue\n"
        "print(run.info.run_name, local)"
    ),
    new_code_cell(
        "module = AgentModule.load_from_checkpoint(local, map_location='cpu').eval()\n"
        "data = DMCDataModule.from_checkpoint(local)\n"
        "env = data.make_env(mode=MODE, seed=data.env_settings.seed + 123)\n"
        "policy = module.policy_module(deterministic=True)\n"
        "states = collect_states(env, policy, 1000)  # the episode's physics states\n"
        "print(f'{MODE}: {len(states)} states')"
    ),
    new_code_cell(
        "# Six observations spread over the episode, the bodies of each of their frames, and the saliency.\n"
        "stack, task = data.env_settings.frame_stack, data.env_settings.task\n"
        "picks = torch.linspace(stack, len(states) - 1, 6).round().long().tolist()\n"
        "obs = stacked_observations(env, states, picks, stack)\n"
        "bodies = stacked_body_masks(env, task, states, picks, stack)\n"
        "with torch.no_grad():\n"
        "    actions = policy(TensorDict({'pixels': obs}, batch_size=[len(picks)]))['action']\n"
        "maps = saliency_maps(module, obs, actions)\n"
        "print('critic:', focus_scores(maps['attribution'], maps['mask'], bodies))\n"
        "grid = saliency_grid(obs, maps['attribution'], maps['mask'], maps['masked_obs'], maps['predicted_prob'], [f't={t}' for t in picks], bodies=bodies[:, -1])\n"
        "fig, ax = plt.subplots(figsize=(grid.shape[1] / 50, grid.shape[0] / 50))\n"
        "ax.imshow(grid)\n"
        "ax.set_title(f'{MODE}: observation / attribution / mask / masked / predicted')\n"
        "ax.axis('off');"
    ),
]


def main() -> None:
    for name, cells in [("inspect_runs", INSPECT), ("saliency_explorer", EXPLORER)]:
        notebook = new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(notebook, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
