"""Speed of every registered credit estimator on synthetic ALFWorld-like batches (``make bench``).

    .venv/bin/python bench/credit_speed.py [--sizes 16,128,1024] [--repeats 5]

The benchmark lives in ``agentrl.eval.credit_speed`` so that ``agentrl bench credit --part speed``
runs from an installed package; this script keeps the checkout's entry point.
"""

from agentrl.eval.credit_speed import main

if __name__ == "__main__":
    main()
