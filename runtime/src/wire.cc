// placeholder: written by the codec work
