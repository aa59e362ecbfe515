"""`python -m internvl_train stage=contrastive|generative|sft [experiment=<recipe>] [key=value ...]`."""
from internvl_train.app import main

if __name__ == "__main__":
    main()
