def count_words(words, minimum):
    counts = {}
    for word in words:
        if len(word) >= minimum:
            counts[word] = counts.get(word, 0) + 1
    return counts
