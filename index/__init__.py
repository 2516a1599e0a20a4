"""Semantic IDs: RQ-VAE quantiser, S-ID map, trie as CSR arrays, the ad index, snapshot store. No servers."""
