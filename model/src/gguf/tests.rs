// tests written with dequant
