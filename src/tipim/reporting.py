"""W&B through Lightning's WandbLogger. The mode comes from the environment (``WANDB_MODE``:
``offline`` writes a local run that ``wandb sync`` uploads later; ``disabled`` in tests); no
committed config sets it, and face images are logged only when a user asks for them."""

from __future__ import annotations

RESULT_COLUMNS = ["method", "surrogates", "eval_model", "white_box", "rank1_t", "rank5_t", "rank1_ut", "rank5_ut", "clean_rank1", "n_probes", "psnr", "ssim", "mmd"]


def log_results_to_wandb(rows: list[dict], config: dict, project: str = "tipim", save_dir: str = ".") -> str:
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project=project, save_dir=save_dir, job_type="evaluate")
    logger.log_hyperparams({k: v for k, v in config.items() if k != "func"})
    data = [[("+".join(r[c]) if isinstance(r[c], list) else r[c]) for c in RESULT_COLUMNS] for r in rows]
    logger.log_table("results", columns=RESULT_COLUMNS, data=data)
    for r in rows:
        prefix = f"{r['method']}/{'+'.join(r['surrogates'])}/{r['eval_model']}"
        logger.log_metrics({f"{prefix}/{k}": r[k] for k in ("rank1_t", "rank5_t", "rank1_ut", "rank5_ut", "psnr", "ssim")})
    run_dir = logger.experiment.dir
    logger.experiment.finish()
    return run_dir


__all__ = ["RESULT_COLUMNS", "log_results_to_wandb"]
