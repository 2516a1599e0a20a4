"""The search-ads path (RARE): commercial intentions (CIs), their index, model, offline build and evaluation."""
