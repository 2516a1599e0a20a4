"""Semantic-ID trie (CSR arrays), CI set and inverted index, snapshot store. No servers."""
