"""The names of the files in a run folder and a sweep folder: the one place they are spelled.

Every module that writes or reads a run folder takes its file names from here; what the files hold
is each writer's own business (the transcript: pipeline.core.transcript; the status:
pipeline.run.status; ...). Which folders a run may use is pipeline.run.files.
"""

# a run folder
CONFIG_FILE = "config.json"  # the run's settings, secrets masked
PLAN_FILE = "plan.json"  # what the plan stage decided
LOAD_FILE = "load.json"  # how the in-process model was loaded (or kept from an earlier job)
INPUTS_FILE = "inputs.json"  # fingerprints of the dataset, history and model files: a resume compares them
TRANSCRIPT_FILE = "transcript.jsonl"  # one record per answer
SCORES_FILE = "scores.jsonl"  # the score stage's journal: each answer's score as it is made (pipeline.stages.score)
JUDGEMENTS_FILE = "judgements.jsonl"  # the judge's journal: each answer's grade as it is made (pipeline.stages.judge)
STAGES_FILE = "stages.json"  # the seconds of the stages up to execute, for a run that goes on at the score stage
SUMMARY_FILE = "summary.json"  # the summarize stage's scores, intervals and speed
STATUS_FILE = "status.json"  # started / success / failed / interrupted, and why
TRACKING_FILE = "tracking.json"  # which MLflow run holds this run, and whether it is in step
SOURCE_FILE = "source.json"  # a re-scored run: the run whose transcript it scored
CONVERSATION_FILE = "conversation.json"  # a terminal chat's saved conversation
RUN_LOG_FILE = "run.log"  # the job log (conf/hydra/job_logging)
HYDRA_FOLDER = ".hydra"  # Hydra's record of the run: its config, its own settings, the overrides
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")

# a sweep folder
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of the sweep
SWEEP_FILE = "sweep.json"  # the sweep's MLflow parent run
SWEEP_SUMMARY_FILE = "sweep_summary.json"  # each job's state and metrics, written when the sweep ends
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
