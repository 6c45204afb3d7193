"""The ``agentrl`` command line: environments (list, show, play, generate, serve) and benchmarks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="agentrl: multi-turn agent environments, credit assignment and RL training for LLM agents.",
    no_args_is_help=True,
)
envs_app = typer.Typer(help="List, inspect, play, generate and serve environments.", no_args_is_help=True)
webshop_app = typer.Typer(help="WebShop: serve the shopping site.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(envs_app, name="envs")
app.add_typer(bench_app, name="bench")
envs_app.add_typer(webshop_app, name="webshop")


def parse_kv(pairs: list[str]) -> dict[str, Any]:
    """["size=3", "slip=0.1", "split=train", "debug=true"] -> typed keyword arguments."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lower() in ("none", "null"):
            value = None
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        out[key.strip()] = value
    return out


def _make(name: str, options: list[str]) -> Any:
    from agentrl.envs import make

    try:
        return make(name, **parse_kv(options))
    except KeyError as e:
        raise typer.BadParameter(str(e.args[0]) if e.args else str(e)) from None
    except TypeError as e:
        raise typer.BadParameter(f"bad option for env {name!r}: {e}") from None


def _env_option_error(e: TypeError) -> str | None:
    """The env's name when ``e`` came out of ``agentrl.envs.make`` (a bad ``env.kwargs`` entry), else None.

    Only a TypeError raised while an env is built is a config problem; any other is a bug whose
    traceback should show.
    """
    from agentrl.envs.registration import make

    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is make.__code__:
            return str(tb.tb_frame.f_locals.get("name"))
        tb = tb.tb_next
    return None


def _main_process_echo(line: str) -> None:
    """Print ``line`` once: in rank 0 when a launcher started several processes."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(line)


@contextmanager
def _config_errors() -> Iterator[None]:
    """A bad config or env option, or an unreachable rollout server, ends the command with
    ``error: ...`` and exit code 2, no traceback (checkpoints already written stay)."""
    from agentrl.policies.openai import OpenAIServerError

    try:
        yield
    except (ValueError, OpenAIServerError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    except TypeError as e:
        env_name = _env_option_error(e)
        if env_name is None:
            raise
        typer.echo(f"error: bad option for env {env_name!r} (env.kwargs): {e}", err=True)
        raise typer.Exit(code=2) from None


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="a YAML config, e.g. configs/quickstart.yaml"),
    overrides: list[str] | None = typer.Argument(
        None, help="dotted overrides, e.g. optim.lr=1e-4 algorithm.estimator=hgpo"
    ),
    out: Path | None = typer.Option(
        None, help="run directory (default: the config's out_dir); an existing run resumes"
    ),
) -> None:
    """Train a policy with RL (rollout -> credit -> LoRA update), with optional SFT warm start and evaluation.

    Data-parallel on several GPUs or CPU processes: `accelerate launch --multi_gpu --num_processes N
    -m agentrl.cli train CONFIG` (or `torchrun --nproc_per_node N -m agentrl.cli train CONFIG`).
    """
    if not config.is_file():
        raise typer.BadParameter(f"config file {str(config)!r} does not exist")
    from agentrl.trainers import train as run_training

    with _config_errors():
        run_dir = run_training(
            config,
            out_dir=out,
            overrides=list(overrides or []),
            progress=lambda line: typer.echo(line, err=True),
        )
    _main_process_echo(f"run directory: {run_dir}")


@app.command("sft")
def sft(
    config: Path = typer.Argument(..., help="a train config; its sft: section and model are used"),
    overrides: list[str] | None = typer.Argument(
        None, help="dotted overrides, e.g. sft.epochs=4 sft.tasks.count=500"
    ),
    out: Path | None = typer.Option(None, help="run directory (default: the config's out_dir)"),
) -> None:
    """Only the SFT warm start of a train config: imitate the env's expert, save the merged model.

    Runs even when the config says sft.enabled: false. Writes config.yaml, run.json,
    sft_metrics.jsonl and sft-model/ (for `agentrl eval --policy hf:RUN/sft-model` or model.path).
    """
    if not config.is_file():
        raise typer.BadParameter(f"config file {str(config)!r} does not exist")
    from agentrl.trainers.loop import run_sft

    with _config_errors():
        model_dir = run_sft(
            config,
            out_dir=out,
            overrides=list(overrides or []),
            progress=lambda line: typer.echo(line, err=True),
        )
    _main_process_echo(f"sft model: {model_dir}")


@envs_app.command("list")
def envs_list() -> None:
    """Names accepted by ``make`` and their gymnasium ids."""
    from agentrl.envs import gym_id, list_envs

    for name in list_envs():
        typer.echo(f"{name:<18} {gym_id(name)}")


@envs_app.command("show")
def envs_show(
    name: str,
    seed: int = typer.Option(0, help="reset seed"),
    task_id: str | None = typer.Option(None, help="task to reset to"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="env constructor argument, key=value (repeatable)"
    ),
) -> None:
    """Reset an env once and print its first observation and info."""
    env = _make(name, option)
    obs, info = env.reset(seed=seed, options={"task_id": task_id} if task_id else None)
    typer.echo(obs)
    typer.echo("--- info")
    for key, value in info.items():
        typer.echo(f"{key}: {value}")
    env.close()


@envs_app.command("play")
def envs_play(
    name: str,
    seed: int = typer.Option(0, help="reset seed"),
    task_id: str | None = typer.Option(None, help="task to reset to"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="env constructor argument, key=value (repeatable)"
    ),
) -> None:
    """Play an env in the terminal: type an action (or the number of an admissible one); 'quit' stops."""
    env = _make(name, option)
    obs, info = env.reset(seed=seed, options={"task_id": task_id} if task_id else None)
    total, steps = 0.0, 0
    while True:
        typer.echo(f"\n{obs}")
        actions = info.get("admissible_actions") or []
        for i, a in enumerate(actions, start=1):
            typer.echo(f"  {i:>2}. {a}")
        line = sys.stdin.readline()
        if not line or line.strip().lower() in ("quit", "exit"):
            break
        choice = line.strip()
        if choice.isdigit() and 1 <= int(choice) <= len(actions):
            choice = actions[int(choice) - 1]
        obs, reward, terminated, truncated, info = env.step(choice)
        total, steps = total + float(reward), steps + 1
        if not info.get("valid", True):
            typer.echo("(not a valid action)")
        if terminated or truncated:
            typer.echo(f"\n{obs}")
            break
    typer.echo(f"\nsteps={steps} return={total:g} success={bool(info.get('success', False))}")
    env.close()


@envs_app.command("generate")
def envs_generate(
    name: str = typer.Argument(..., help="env whose data to generate: alfworld"),
    out: Path = typer.Option(..., help="output directory"),
    per_type: int = typer.Option(10, help="games per task type and split"),
    seed: int = typer.Option(0, help="generator seed"),
    split: list[str] = typer.Option(
        [], "--split", help="only this split (repeatable): train, valid_seen, valid_unseen"
    ),
) -> None:
    """Generate an env's offline data set (ALFWorld games in the original json_2.1.1 layout)."""
    if name != "alfworld":
        raise typer.BadParameter(f"no generator for {name!r}; available: alfworld")
    from agentrl.envs.alfworld import generate_games

    kwargs: dict[str, Any] = {"splits": split} if split else {}
    summary = generate_games(out, per_type=per_type, seed=seed, progress=True, **kwargs)
    typer.echo(f"wrote games to {out}: {summary}")


@envs_app.command("serve")
def envs_serve(
    name: str = typer.Argument(..., help="registered env to serve over HTTP"),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
    port: int = typer.Option(8100, help="port"),
    token: str | None = typer.Option(None, envvar="AGENTRL_ENV_TOKEN", help="bearer token clients must send"),
    max_envs: int = typer.Option(256, help="most env instances open at once"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="env constructor argument, key=value (repeatable)"
    ),
    protocol: str = typer.Option(
        "agentrl",
        help="agentrl (HTTP create/reset/step/close) or openenv (OpenEnv's WebSocket protocol, its clients)",
    ),
) -> None:
    """Serve an env over HTTP (create/reset/step/close); use it with make("remote", url=..., token=...).

    With --protocol openenv, OpenEnv clients (TRL, SkyRL, torchforge, ...) use it; see docs/envs.md."""
    from agentrl.envs import list_envs
    from agentrl.envs.remote import serve_env

    if name not in list_envs():
        raise typer.BadParameter(f"unknown env {name!r}; available: {', '.join(list_envs())}")
    if protocol not in ("agentrl", "openenv"):
        raise typer.BadParameter(f"--protocol must be agentrl or openenv, got {protocol!r}")
    if protocol == "openenv":
        _serve_openenv(name, host, port, token, max_envs, option)
        return
    typer.echo(f"serving env {name!r} at http://{host}:{port} (Ctrl-C stops)", err=True)
    serve_env(name, host=host, port=port, token=token, max_envs=max_envs, **parse_kv(option))


def _serve_openenv(
    name: str, host: str, port: int, token: str | None, max_envs: int, option: list[str]
) -> None:
    """``agentrl envs serve NAME --protocol openenv``: the env to OpenEnv clients, over a WebSocket."""
    from agentrl.envs.openenv import openenv_server

    server = openenv_server(name, host=host, port=port, token=token, max_envs=max_envs, **parse_kv(option))
    server.listen()  # clients that connect from now on wait in the queue, none is refused
    typer.echo(
        f"serving env {name!r} to OpenEnv clients at {server.url} (WebSocket {server.url}/ws; Ctrl-C stops)",
        err=True,
    )
    server.serve_forever()


# ----------------------------------------------------------------------------- MCP (envs serve-mcp)


@envs_app.command("serve-mcp")
def envs_serve_mcp(
    name: str = typer.Argument(
        ..., help="tool env (tools, bfcl) or module path pkg.mod[:attr] of @tool functions"
    ),
    transport: str = typer.Option("stdio", help="stdio (for a client that starts this command) or http"),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address (loopback by default)"),
    port: int = typer.Option(8200, help="HTTP port"),
    token: str | None = typer.Option(
        None, envvar="AGENTRL_MCP_TOKEN", help="bearer token HTTP clients must send"
    ),
    task_id: str | None = typer.Option(None, help="task whose initial state each session starts from"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="env constructor argument, key=value (repeatable)"
    ),
) -> None:
    """Serve a tool env's tools over MCP (stdio or streamable HTTP at /mcp), for any MCP client."""
    from agentrl.envs.mcp_server import serve_mcp

    if transport not in ("stdio", "http"):
        raise typer.BadParameter(f"--transport must be stdio or http, got {transport!r}")
    if token is not None and transport == "stdio":
        raise typer.BadParameter("--token is checked on HTTP only; over stdio the client starts this process")
    try:
        serve_mcp(
            name,
            transport=transport,
            host=host,
            port=port,
            token=token,
            task_id=task_id,
            on_ready=lambda url: typer.echo(
                f"serving MCP tools of {name!r} at {url} (Ctrl-C stops)", err=True
            ),
            **parse_kv(option),
        )
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e)) from None


@webshop_app.command("serve")
def webshop_serve(
    host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
    port: int = typer.Option(3000, help="port"),
    split: str = typer.Option("test", help="goal split: test, eval or train"),
) -> None:
    """Serve the WebShop site as HTML (open it in a browser)."""
    from agentrl.envs.webshop import serve

    serve(host=host, port=port, split=split)


@app.command("eval")
def eval_command(
    policy: str = typer.Option(
        ...,
        help="hf:PATH (a local model directory, or a training run: its directory, a checkpoint or its adapter), "
        "vllm:PATH (the same, sampled by vLLM on a CUDA GPU), "
        "openai:URL (an OpenAI-compatible server; key from $OPENAI_API_KEY or $AGENTRL_API_KEY), random, or expert",
    ),
    out: Path = typer.Option(..., help="output directory (report.json, report.md/html, eval/episodes.jsonl)"),
    env: str | None = typer.Option(
        None, help="registered env, e.g. alfworld, webshop, maze (default for a training run: the run's)"
    ),
    model: str | None = typer.Option(
        None, help="openai: the served model or adapter name (default: the first listed)"
    ),
    episodes: int | None = typer.Option(
        None, help="tasks played per seed (default 50; a training run: its eval.tasks.count)"
    ),
    task_start: int | None = typer.Option(
        None, help="index of the first task (default 0; a training run: its eval.tasks.start)"
    ),
    episodes_per_task: int | None = typer.Option(
        None, help="episodes of each task per seed (default 1; a training run: its eval.episodes_per_task)"
    ),
    seeds: int | None = typer.Option(
        None, help="number of seeds; every task is played once per seed (default 1)"
    ),
    split: str | None = typer.Option(None, help="env split (same as -o split=...)"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="env constructor argument, key=value (repeatable; over a training run's)"
    ),
    adapter: Path | None = typer.Option(
        None,
        help="hf/vllm: a LoRA adapter directory to load (a training run's checkpoint: its settings apply)",
    ),
    max_turns: int | None = typer.Option(None, help="turns per episode (default 50)"),
    temperature: float | None = typer.Option(
        None, help="model policies: sampling temperature (default 0 = greedy)"
    ),
    max_new_tokens: int | None = typer.Option(None, help="model policies: tokens per response (default 256)"),
    prompt: str | None = typer.Option(
        None,
        help="model policies: step (the last --history-k steps) or chat (the whole episode); default step",
    ),
    history_k: int | None = typer.Option(
        None, help="model policies: (observation, action) pairs shown in step prompts (default 2)"
    ),
    response_format: str | None = typer.Option(
        None, help="model policies: think_action, tool_call or hiper (default think_action)"
    ),
    num_envs: int | None = typer.Option(None, help="model policies: envs stepped in lockstep (default 4)"),
    system_prompt: str | None = typer.Option(
        None, help="model policies: the system prompt training used (rollout.system_prompt)"
    ),
    action_choice: str | None = typer.Option(
        None,
        help="hf policies: generate (write each response; default) or admissible (pick among the env's "
        "admissible actions by their probability; rollout.action_choice)",
    ),
) -> None:
    """Evaluation only: success rate with a 95% Wilson interval, per task type and per seed, and a report.

    A training run's checkpoint is evaluated on the prompts, decoding and held-out tasks its own
    evaluation used (its config.yaml); options given here override them."""
    from agentrl.eval.evaluate import eval_config, evaluate

    env_kwargs = parse_kv(option)
    if split is not None:
        env_kwargs["split"] = split
    try:
        cfg = eval_config(
            policy,
            env=env,
            env_kwargs=env_kwargs,
            adapter=str(adapter) if adapter else None,
            num_envs=num_envs,
            model=model,
            prompt={
                "kind": prompt,
                "history_k": history_k,
                "response_format": response_format,
                "system_prompt": system_prompt,
            },
            task_start=task_start,
            task_count=episodes,
            episodes_per_task=episodes_per_task,
            seeds=seeds,
            max_turns=max_turns,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            action_choice=action_choice,
        )
        if cfg.run is not None:
            _main_process_echo(
                f"evaluating {cfg.adapter or cfg.policy} with the settings of the training run {cfg.run}"
            )
        report = evaluate(cfg, out, progress=lambda msg: typer.echo(msg, err=True))
    except (ValueError, KeyError) as e:
        typer.echo(f"error: {e.args[0] if e.args else e}", err=True)
        raise typer.Exit(code=2) from None
    _main_process_echo(
        f"success {report['success_rate']:.3f} (95% CI {report['ci_low']:.3f}-{report['ci_high']:.3f}) "
        f"over {report['episodes']} episodes; report: {out / 'report.md'}"
    )


@app.command("serve")
def serve_command(
    model_path: Path = typer.Argument(..., help="a local model directory (transformers format)"),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
    port: int = typer.Option(8000, help="port"),
    adapter: str | None = typer.Option(None, help="a LoRA adapter to load at start: name=DIR or DIR"),
    served_model_name: str | None = typer.Option(None, help="model name clients use (default: the path)"),
    max_batch_size: int = typer.Option(32, help="most sequences per generate call"),
    api_key: str | None = typer.Option(None, envvar="AGENTRL_API_KEY", help="bearer key clients must send"),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
) -> None:
    """An OpenAI-compatible server (chat completions with token ids, LoRA load/unload) over the hf policy."""
    if not model_path.is_dir():
        raise typer.BadParameter(f"model directory {str(model_path)!r} does not exist")
    from agentrl.policies.server import serve

    serve(
        model_path,
        host=host,
        port=port,
        adapter=adapter,
        served_model_name=served_model_name,
        max_batch_size=max_batch_size,
        api_key=api_key,
        device=device,
    )


@app.command("view")
def view(
    run_dir: Path = typer.Argument(
        ..., help="a run directory (trajectories*.jsonl, metrics.jsonl, report.json, ...)"
    ),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
    port: int = typer.Option(0, help="port (0 = a free one)"),
    open_browser: bool = typer.Option(False, "--open", help="open the page in the default browser"),
) -> None:
    """Browse a run's episodes step by step, with every credit method's advantages side by side."""
    if not run_dir.is_dir():
        raise typer.BadParameter(f"run directory {str(run_dir)!r} does not exist")
    from agentrl.eval.viewer import serve_viewer

    serve_viewer(run_dir, host=host, port=port, open_browser=open_browser)


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="a run directory")) -> None:
    """Write report.md and report.html (success with 95% CIs, per-type bars, learning curves)."""
    if not run_dir.is_dir():
        raise typer.BadParameter(f"run directory {str(run_dir)!r} does not exist")
    from agentrl.eval.report import write_report

    for kind, path in write_report(run_dir).items():
        typer.echo(f"{kind}: {path}")


@bench_app.command("credit")
def bench_credit(
    part: str = typer.Option(
        "all",
        help="speed, fidelity, tree, learning or all (all = speed + fidelity; tree = tree rollouts against flat groups at equal env steps; learning trains every method on 2 families x 5 seeds)",
    ),
    sizes: str = typer.Option("16,128,1024", help="speed: comma-separated task counts P"),
    group_sizes: str = typer.Option("2,4,8,16", help="fidelity: comma-separated group sizes N"),
    tasks: int = typer.Option(16, help="fidelity: maze tasks per resample"),
    resamples: int = typer.Option(20, help="fidelity: independent groups per task and size"),
    seed: int = typer.Option(0, help="fidelity: sampling seed; learning: the first training seed"),
    out: Path | None = typer.Option(
        None,
        help="fidelity: write fidelity.md/json here; learning: runs and learning.md/json/png (default runs/bench-learning)",
    ),
    config: Path | None = typer.Option(
        None, help="learning: one custom base training config instead of the built-in families"
    ),
    family: str | None = typer.Option(
        None, help="learning: comma-separated built-in task families (default: all: maze, maze_long)"
    ),
    iterations: int | None = typer.Option(
        None, min=1, help="learning: RL iterations per method (default: the config's)"
    ),
    seeds: int = typer.Option(5, min=1, help="learning: number of seeds (--seed, --seed + 1, ...)"),
    estimators: str | None = typer.Option(
        None, help="learning: comma-separated estimators (default: every one the trainer can run)"
    ),
    baseline: str = typer.Option("grpo", help="learning: the method every other one is paired against"),
    jobs: int = typer.Option(2, min=1, help="learning: runs trained at once, one process each"),
    draws: int = typer.Option(
        1,
        min=1,
        help="learning: RL runs per method and seed from the seed's warm start (other training seeds, same evaluation draws); a seed's result is their mean",
    ),
    roots: int = typer.Option(4, min=1, help="tree: root episodes per task"),
    width: int = typer.Option(2, min=1, help="tree: branches per branch point"),
    points: int = typer.Option(1, min=1, help="tree: branch points per root"),
    chains: str = typer.Option(
        "4x4x1,2x2x1,4x4x2", help="tree: chain samplings for spo_chain, ROOTSxINTERVALxWIDTH, comma-separated"
    ),
) -> None:
    """Credit benchmark: estimator speed on synthetic batches, fidelity to the maze's exact Q - V, and
    learning (every method trains the same policy on the same tasks and seeds)."""
    if part not in ("speed", "fidelity", "tree", "learning", "all"):
        raise typer.BadParameter(f"--part must be speed, fidelity, tree, learning or all, got {part!r}")
    if part == "tree":
        from agentrl.eval.tree_fidelity import parse_chains, tree_fidelity, tree_fidelity_markdown

        try:
            chain_samplings = parse_chains(chains)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        tree_rows = tree_fidelity(
            tasks=tasks,
            roots=roots,
            width=width,
            points=points,
            chains=chain_samplings,
            flat_sizes=[int(n) for n in group_sizes.split(",")],
            resamples=resamples,
            seed=seed,
            progress=lambda msg: typer.echo(msg, err=True),
        )
        typer.echo(tree_fidelity_markdown(tree_rows))
    if part in ("speed", "all"):
        from agentrl.eval.credit_speed import credit_speed, parse_sizes

        try:
            task_counts = parse_sizes(sizes)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        credit_speed(task_counts, echo=typer.echo)
    if part in ("fidelity", "all"):
        import json

        from agentrl.eval.fidelity import credit_fidelity, fidelity_markdown

        rows = credit_fidelity(
            tasks=tasks,
            group_sizes=[int(n) for n in group_sizes.split(",")],
            resamples=resamples,
            seed=seed,
            progress=lambda msg: typer.echo(msg, err=True),
        )
        table = fidelity_markdown(rows)
        typer.echo(table)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "fidelity.md").write_text(table + "\n", encoding="utf-8")
            (out / "fidelity.json").write_text(
                json.dumps([r.as_dict() for r in rows], indent=1), encoding="utf-8"
            )
            typer.echo(f"wrote {out / 'fidelity.md'} and {out / 'fidelity.json'}", err=True)
    if part == "learning":
        from agentrl.config import ConfigError
        from agentrl.eval.learning import credit_learning, learning_markdown

        names = [n.strip() for n in estimators.split(",") if n.strip()] if estimators else None
        try:
            result = credit_learning(
                out if out is not None else Path("runs/bench-learning"),
                config=config,
                families=[f.strip() for f in family.split(",") if f.strip()] if family else None,
                estimators=names,
                seeds=list(range(seed, seed + seeds)),
                iterations=iterations,
                baseline=baseline,
                jobs=jobs,
                draws=draws,
                progress=lambda msg: typer.echo(msg, err=True),
            )
        except ConfigError as e:
            raise typer.BadParameter(str(e)) from None
        typer.echo(learning_markdown(result))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
